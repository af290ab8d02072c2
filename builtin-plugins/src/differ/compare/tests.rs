//! Tests of the layer comparer.
