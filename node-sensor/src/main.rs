fn main() -> anyhow::Result<()> {
    let mut p = node_sensor::loader::load(node_sensor::btf_offsets::VMLINUX_BTF)?;
    std::process::Command::new("/bin/sh").args(["-c", "cd /tmp && /usr/bin/id -u; exit 3"]).status()?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    while let Some(item) = p.ring.next() {
        println!("{:?}", node_sensor::decode::decode(&item));
    }
    println!("{:?}", p.counters());
    Ok(())
}
