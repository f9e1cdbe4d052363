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
        // Ingest keeps each decoded event where prost put it: no copy of
        // the (large) struct on its way to the merge.
        .boxed(".vigil.relay.v1.SequencedEvent.event")
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .extern_path(".google.protobuf.Timestamp", "crate::Timestamp")
        .compile_fds(fds.clone())?;

    // The server side of `tetragon.FineGuidanceSensors` once more, with
    // GetEvents streaming `OutEvent`s: an event fanned out to many clients
    // is encoded once and its bytes shared (see `shared.rs`). Every message
    // type is the one generated above.
    let shared_out = out.join("shared");
    std::fs::create_dir_all(&shared_out)?;
    let service_only = prost_types::FileDescriptorSet {
        file: fds.file.iter().filter(|f| f.name() == "tetragon/sensors.proto").cloned().collect(),
    };
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&shared_out)
        .extern_path(".tetragon", "crate::tetragon")
        .extern_path(".tetragon.GetEventsResponse", "crate::shared::OutEvent")
        .compile_fds(service_only)?;

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
