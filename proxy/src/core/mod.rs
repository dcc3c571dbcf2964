//! The bottom layer: what every layer above uses and that knows nothing of the mesh's config or
//! transports. Bodies, protocol detection, drain, limits, the monotonic clock, header rules
//! shared by both directions, and the metrics registry.

pub mod body;
pub mod clock;
pub mod closing;
pub mod detect;
pub mod drain;
pub mod headers;
pub mod limits;
pub mod metrics;
pub mod request_check;
pub mod rewind;
