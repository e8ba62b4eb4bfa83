//! The gateway's rooms import downward only. Each top-level module has a layer; a module may
//! name (`crate::<module>`) only modules of lower layers, so there is no import loop among
//! them: this test fails on an import that goes up or sideways. Test code (`#[cfg(test)]`) may
//! reach up to build what it tests with. Run alone with
//! `cargo test -p axle-gateway --test it layers`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first. Modules of one layer do not import each other either, except as listed.
const LAYERS: &[&[&str]] = &[
    &["warnings", "tls"],
    &["vars"],
    &["resource"],
    &["store", "client"],
    &["runtime", "admin"],
    &["plugins"],
    &["proxy"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every `crate::<module>` a top-level module's non-test code names.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let file = entry.unwrap().path();
            if file.is_dir() {
                stack.push(file);
                continue;
            }
            if file.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = file.strip_prefix(src).unwrap();
            let first = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_string();
            if module == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if layer(&name).is_some() && name != module {
                    found.entry(module.clone()).or_default().insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn the_gateways_rooms_import_downward_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = imports(&src);
    for module in found.keys() {
        assert!(
            layer(module).is_some(),
            "module {module} has no layer in LAYERS"
        );
    }
    let mut upward = BTreeSet::new();
    for (from, targets) in &found {
        for to in targets {
            if layer(to) >= layer(from) {
                upward.insert((from.as_str(), to.as_str()));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that go up (see LAYERS): {upward:?}"
    );
}
