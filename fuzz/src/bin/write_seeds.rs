//! Writes the seed inputs of the fuzz targets that need structure libFuzzer would take long to
//! find on its own: config pushes (protobuf) made from real snapshots, by the same code the
//! controller uses. Run once: `cargo +nightly run --bin write_seeds` in fuzz/.
#![allow(clippy::unwrap_used)]

use nodus_config::ConfigSnapshot;
use nodus_wire::{ConfigPush, ResourceMapDelta};
use prost::Message;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("corpus/config_protobuf");
    std::fs::create_dir_all(&out).unwrap();
    for (index, entry) in std::fs::read_dir(root.join("corpus/config_yaml")).unwrap().enumerate() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let snapshot = match serde_norway::from_str::<ConfigSnapshot>(&text) {
            Ok(snapshot) => snapshot,
            Err(error) => panic!("{}: {error}", path.display()),
        };
        let resources = nodus_wire::split(&snapshot).unwrap();
        let delta = resources.delta_to(&Default::default());
        let push = ConfigPush {
            version: snapshot.version,
            full: true,
            updated: delta.updated,
            removed: delta.removed,
            ..Default::default()
        };
        std::fs::write(out.join(format!("seed-{index}")), push.encode_to_vec()).unwrap();
    }
}
