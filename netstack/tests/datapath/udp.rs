//! UDP flows and DNS interception.
