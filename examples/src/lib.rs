//! Services of the two seed flows.
