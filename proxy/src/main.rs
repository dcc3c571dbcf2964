//! The node proxy binary (wired in a later commit).
fn main() {}
