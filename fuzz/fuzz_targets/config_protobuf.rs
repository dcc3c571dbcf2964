//! Config pushes as they arrive on the control-plane stream (protobuf): decoding, staging the
//! resources (each body decoded), validating and applying never panic; a push that fails any
//! step leaves the proxy's config untouched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodus_wire::{ConfigPush, ResourceSet};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(push) = ConfigPush::decode(data) else { return };
    let held = ResourceSet::default();
    let Ok((snapshot, _next)) = held.stage(&push) else { return };
    nodus_fuzz::apply_checked(snapshot);
});
