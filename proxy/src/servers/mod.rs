//! The listeners: the outbound one (captured connections from this node's pods), the inbound
//! one (tunnels from other node proxies, and captured plaintext on its way in), the admin port,
//! the hand-over of listeners to a successor, and each source pod's fair share.

pub mod admin;
pub mod fairness;
pub mod handoff;
pub mod inbound;
pub mod original_dst;
pub mod outbound;
