//! ringfence VMM library.
