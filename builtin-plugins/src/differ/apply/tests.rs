//! Tests of the layer applier.
