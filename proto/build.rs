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
    let mut fds = protox::compile(PROTOS, ["proto"])?;
    fds.file.push(kprobe_argument_value(&fds)?);
    let descriptor_bytes = fds.encode_to_vec();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptors.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        // Sorted maps: protojson writes map keys in order.
        .btree_map(".")
        // Ingest keeps each decoded event where prost put it: no copy of
        // the (large) struct on its way to the merge.
        .boxed(".vigil.relay.v1.SequencedEvent.event")
        // A process's large optional parts, boxed: `Process` inline was
        // 1,008 bytes, most of them for parts a process often lacks (pod,
        // credentials, capabilities, namespaces, binary properties), and
        // every cached process and every event's process and parent paid
        // for them (BENCHMARKS.md, memory per cached process).
        .boxed(".tetragon.Process.pod")
        .boxed(".tetragon.Process.process_credentials")
        .boxed(".tetragon.Process.binary_properties")
        .boxed(".tetragon.Process.cap")
        .boxed(".tetragon.Process.ns")
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

    // GetEventsResponse and KprobeArgument get hand-written serde impls
    // (see `json.rs`): Go's protojson writes fields in declaration order,
    // which puts their oneofs before the fields declared after them
    // (`node_name`/`time`, `label`); pbjson would write the oneof last.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .extern_path(".google.protobuf.Timestamp", "crate::Timestamp")
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .btree_map(["."])
        .exclude([".tetragon.GetEventsResponse", ".tetragon.KprobeArgument"])
        .build(&[".tetragon", ".vigil"])?;
    Ok(())
}

/// `vigil.json.KprobeArgumentValue`: `tetragon.KprobeArgument`'s oneof
/// alone, made from its descriptor (so the two cannot drift apart). Its
/// pbjson impl writes the oneof member; `json.rs` adds `label` after it.
fn kprobe_argument_value(
    fds: &prost_types::FileDescriptorSet,
) -> Result<prost_types::FileDescriptorProto, Box<dyn std::error::Error>> {
    let tetragon =
        fds.file.iter().find(|f| f.name() == "tetragon/tetragon.proto").ok_or("tetragon/tetragon.proto is missing")?;
    let mut message = tetragon
        .message_type
        .iter()
        .find(|m| m.name() == "KprobeArgument")
        .cloned()
        .ok_or("tetragon.KprobeArgument is missing")?;
    message.name = Some("KprobeArgumentValue".into());
    message.field.retain(|f| f.oneof_index.is_some());
    Ok(prost_types::FileDescriptorProto {
        name: Some("vigil/json_shadow.proto".into()),
        package: Some("vigil.json".into()),
        dependency: fds.file.iter().filter(|f| f.package() == "tetragon").map(|f| f.name().to_owned()).collect(),
        message_type: vec![message],
        syntax: Some("proto3".into()),
        ..Default::default()
    })
}
