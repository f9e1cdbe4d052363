//! Generates prost/tonic types and protojson (serde) impls from `proto/`.
//! `protox` parses the .proto files in pure Rust, so no `protoc` is needed.

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/tetragon/capabilities.proto",
    "proto/tetragon/tetragon.proto",
    "proto/tetragon/events.proto",
    "proto/tetragon/sensors.proto",
    "proto/vigil/relay.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let descriptor_bytes = fds.encode_to_vec();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptors.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        // Sorted maps: protojson writes map keys in order.
        .btree_map(".")
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .extern_path(".google.protobuf.Timestamp", "crate::Timestamp")
        .compile_fds(fds)?;

    // GetEventsResponse gets a hand-written serde impl (see `json.rs`): Go's
    // protojson writes fields in declaration order, which puts the `event`
    // oneof before `node_name`/`time`; pbjson would write the oneof last.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .extern_path(".google.protobuf.Timestamp", "crate::Timestamp")
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .btree_map(["."])
        .exclude([".tetragon.GetEventsResponse"])
        .build(&[".tetragon", ".vigil"])?;
    Ok(())
}
