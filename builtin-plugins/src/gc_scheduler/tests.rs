//! Tests of the GC scheduler.
