//! The market's OpenAPI document checks against documents written by others: the OpenAPI
//! Initiative's examples are accepted with every operation found, and what the checks refuse,
//! the reference validator (`openapi-spec-validator`, named by `AXLE_TEST_OPENAPI_VALIDATOR`)
//! refuses too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::{Path, PathBuf};

use axle_market::domain::document;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi");
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    found.sort();
    assert_eq!(found.len(), 6);
    found
}

/// The operations a document declares, counted from its text: method keys indented under a
/// path (these examples indent by two).
fn operations_in(text: &str) -> usize {
    text.lines()
        .filter(|line| {
            let key = line
                .trim_end()
                .strip_prefix("    ")
                .and_then(|l| l.strip_suffix(':'));
            key.is_some_and(|k| {
                [
                    "get", "put", "post", "delete", "options", "head", "patch", "trace",
                ]
                .contains(&k)
            })
        })
        .count()
}

#[test]
fn the_openapi_initiatives_examples_are_accepted() {
    for path in examples() {
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = document::check(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(doc.openapi.starts_with("3.0."), "{}", path.display());
        assert!(!doc.title.is_empty());
        assert_eq!(
            doc.operations.len(),
            operations_in(&text),
            "{}",
            path.display()
        );
    }
    let petstore = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/petstore.yaml"),
    )
    .unwrap();
    let doc = document::check(&petstore).unwrap();
    let ops: Vec<_> = doc
        .operations
        .iter()
        .map(|o| {
            format!(
                "{} {} {}",
                o.method,
                o.path,
                o.operation_id.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            "GET /pets listPets",
            "POST /pets createPets",
            "GET /pets/{petId} showPetById"
        ]
    );
}

/// Whether the reference validator accepts `text`.
fn reference_accepts(validator: &str, text: &str, name: &str) -> bool {
    let file = std::env::temp_dir().join(format!("axle-market-{}-{name}.yaml", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let status = std::process::Command::new(validator)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("AXLE_TEST_OPENAPI_VALIDATOR={validator}: {e}"))
        .status;
    let _ = std::fs::remove_file(&file);
    status.success()
}

#[test]
fn what_the_checks_refuse_the_reference_validator_refuses() {
    let petstore = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/petstore.yaml"),
    )
    .unwrap();
    let broken = [
        (
            "no-title",
            petstore.replacen("  title: Swagger Petstore\n", "", 1),
        ),
        (
            "path-without-slash",
            petstore.replacen("  /pets:\n", "  pets:\n", 1),
        ),
        (
            "undeclared-parameter",
            petstore.replacen("          in: path\n", "          in: query\n", 1),
        ),
        (
            "no-openapi",
            petstore.replacen("openapi: \"3.0.0\"\n", "", 1),
        ),
    ];
    let validator =
        axle_core::testing::tool("AXLE_TEST_OPENAPI_VALIDATOR", "openapi-spec-validator");
    if let Some(validator) = &validator {
        assert!(reference_accepts(validator, &petstore, "petstore"));
    }
    for (name, text) in broken {
        assert_ne!(text, petstore, "{name}: the change did not apply");
        let problem = document::check(&text).expect_err(name);
        assert!(problem.at.is_some(), "{name}: {problem}");
        if let Some(validator) = &validator {
            assert!(
                !reference_accepts(validator, &text, name),
                "{name}: the reference accepts it"
            );
        }
    }
}
