//! Every fuzz seed (`fuzz/seeds/TARGET/`), every input a fuzzer found a bug with
//! (`tests/fuzz-regressions/TARGET/`), and the examples and golden configs, replayed through
//! the fuzz targets' checks (`mirrorctl::fuzzing`) on stable, so the harnesses and the fixes
//! stay tested without a fuzzer.

use std::path::{Path, PathBuf};

use mirrorctl::fuzzing;

/// A fuzz target's check.
type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 6] = [
    ("config_native", fuzzing::config_native),
    ("config_istio", fuzzing::config_istio),
    ("route_match", fuzzing::route_match),
    ("upstream_headers", fuzzing::upstream_headers),
    ("upstream_response", fuzzing::upstream_response),
    ("client_stream", fuzzing::client_stream),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of a directory, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Run `check` on every file, naming the file when one fails.
fn replay(check: Check, paths: &[PathBuf]) -> usize {
    for p in paths {
        let data = std::fs::read(p).expect("readable");
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{} fails its fuzz target's checks", p.display());
        }
    }
    paths.len()
}

#[test]
fn seeds_pass_every_target() {
    for (target, check) in TARGETS {
        let n = replay(check, &files(&root().join("fuzz/seeds").join(target)));
        assert!(n >= 2, "fuzz/seeds/{target}: {n} seeds");
    }
}

#[test]
fn fuzzer_findings_stay_fixed() {
    for (target, check) in TARGETS {
        replay(
            check,
            &files(&root().join("tests/fuzz-regressions").join(target)),
        );
    }
}

#[test]
fn examples_and_golden_configs_pass_the_config_targets() {
    let r = root();
    let native = files(&r.join("examples/native"));
    let istio = files(&r.join("examples/istio"));
    assert!(replay(fuzzing::config_native, &native) >= 3);
    assert!(replay(fuzzing::config_istio, &istio) >= 4);
    let golden: Vec<PathBuf> = files(&r.join("tests/golden/broken"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    let name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let (istio_golden, native_golden): (Vec<PathBuf>, Vec<PathBuf>) = golden
        .into_iter()
        .partition(|p| name(p).is_some_and(|n| n.starts_with("istio-")));
    assert!(replay(fuzzing::config_native, &native_golden) >= 1);
    assert!(replay(fuzzing::config_istio, &istio_golden) >= 1);
    // The guide's VirtualService and its destinations, as one multi-document file.
    let mut both = std::fs::read(r.join("examples/istio/seed-virtualservice.yaml")).expect("vs");
    both.extend_from_slice(b"\n---\n");
    both.extend(std::fs::read(r.join("examples/istio/seed-destinations.yaml")).expect("dr"));
    fuzzing::config_istio(&both);
}
