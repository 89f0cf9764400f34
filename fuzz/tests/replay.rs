//! Replays every input kept in `fuzz/corpus/TARGET/` through its target on
//! the stable toolchain, so what the fuzzers found (and the seeds) stays
//! covered by `cargo test`.

#[test]
fn every_kept_input_passes_its_target() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (name, target) in tandem_fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no corpus for {name}");
        for input in &inputs {
            let data = std::fs::read(input).expect("read input");
            target(&data);
        }
        eprintln!("{name}: {} inputs", inputs.len());
        total += inputs.len();
    }
    assert!(total > 0);
}
