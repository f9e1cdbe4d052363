//! Builds the eBPF programs (`node-sensor-ebpf`, nightly) into OUT_DIR.
fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "node-sensor-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../node-sensor-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}
