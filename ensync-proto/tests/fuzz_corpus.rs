//! Replays every fuzz target's seed corpus (`fuzz/corpus/<target>/*`) on stable, so
//! inputs that once crashed a target stay fixed.

use std::path::Path;

#[test]
fn replay_fuzz_corpora() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, run) in ensync_proto::__fuzz::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus folder {} is missing: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let path = entry.expect("readable corpus entry").path();
            if path.is_file() {
                let data = std::fs::read(&path).expect("readable corpus file");
                run(&data);
                count += 1;
            }
        }
        assert!(count > 0, "fuzz target {name} has an empty seed corpus");
    }
}
