//! Deployment files generated from the mappings: the DMS table mappings cover exactly the
//! enabled mapped tables, the committed files are fresh, and `--check` catches stale ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use ferry_core::Catalog;
use ferry_tests::{TempDir, ferry, mappings_dir, repo_root};
use serde_json::Value;

/// Whether a DMS `object-locator` name pattern matches `name`, as the DMS User Guide describes
/// selection rules: `%` matches any run of characters (none included), `_` any one character,
/// `[...]` one character of the class; everything else itself.
fn dms_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('%') => (0..=n.len()).any(|k| go(&p[1..], &n[k..])),
            Some('_') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                // A class: up to the first `]` after at least one character.
                let Some(end) = p.iter().skip(2).position(|c| *c == ']').map(|i| i + 2) else {
                    return false;
                };
                !n.is_empty() && p[1..end].contains(&n[0]) && go(&p[end + 1..], &n[1..])
            }
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

#[test]
fn the_pattern_model_is_dms_s() {
    assert!(
        dms_matches("poker_game", "pokerXgame"),
        "an unescaped _ is a wildcard"
    );
    assert!(dms_matches("poker[_]game", "poker_game"));
    assert!(!dms_matches("poker[_]game", "pokerXgame"));
    assert!(dms_matches("%", "anything"));
    assert!(dms_matches("a[%]b", "a%b") && !dms_matches("a[%]b", "axxb"));
    assert!(dms_matches("a[[]b", "a[b"));
}

#[test]
fn dms_table_mappings_select_exactly_the_enabled_mapped_tables() {
    let catalog = Catalog::load_dir(&mappings_dir()).unwrap();
    let mut disabled_seen = 0;
    for source in catalog.sources() {
        let doc = ferry_core::deploy::dms_table_mappings(source);
        let all = doc["rules"].as_array().unwrap();
        let (selections, transformations): (Vec<&Value>, Vec<&Value>) =
            all.iter().partition(|r| r["rule-type"] == "selection");
        // Every selected table gets the change-sequence column, through its own rule.
        assert_eq!(selections.len(), transformations.len(), "{}", source.name);
        for (sel, tr) in selections.iter().zip(&transformations) {
            assert_eq!(tr["rule-type"], "transformation");
            assert_eq!(tr["rule-target"], "column");
            assert_eq!(tr["rule-action"], "add-column");
            assert_eq!(tr["value"], "AR_H_CHANGE_SEQ");
            assert_eq!(tr["expression"], "$AR_H_CHANGE_SEQ");
            assert_eq!(tr["data-type"]["type"], "string");
            assert_eq!(tr["object-locator"], sel["object-locator"]);
        }
        let rules: Vec<(String, String)> = selections
            .iter()
            .map(|r| {
                assert_eq!(r["rule-type"], "selection");
                assert_eq!(r["rule-action"], "include");
                let l = &r["object-locator"];
                (
                    l["schema-name"].as_str().unwrap().to_owned(),
                    l["table-name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        // The source's tables as DMS sees them: the mapped ones, and neighbours whose names
        // differ only where an unescaped `_` or `%` would match.
        let mut candidates: BTreeSet<(String, String)> = BTreeSet::new();
        for t in &source.tables {
            candidates.insert((t.schema.clone(), t.table.clone()));
            candidates.insert((t.schema.replace('_', "X"), t.table.clone()));
            candidates.insert((t.schema.clone(), t.table.replace('_', "1")));
            candidates.insert((t.schema.clone(), format!("{}_old", t.table)));
        }
        let selected: BTreeSet<(String, String)> = candidates
            .into_iter()
            .filter(|(s, t)| {
                rules
                    .iter()
                    .any(|(ps, pt)| dms_matches(ps, s) && dms_matches(pt, t))
            })
            .collect();
        let enabled: BTreeSet<(String, String)> = source
            .tables
            .iter()
            .filter(|t| t.enabled)
            .map(|t| (t.schema.clone(), t.table.clone()))
            .collect();
        assert_eq!(selected, enabled, "{}", source.name);
        disabled_seen += source.tables.iter().filter(|t| !t.enabled).count();
        let ids: BTreeSet<&str> = all.iter().map(|r| r["rule-id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), all.len(), "rule ids are unique");
    }
    assert!(
        disabled_seen > 0,
        "the committed mappings have a disabled table, which must not be selected"
    );
}

#[test]
fn committed_generated_files_are_fresh() {
    let root = repo_root();
    let m = root.join("mappings");
    let (code, _, err) = ferry(&[
        "dms",
        "table-mappings",
        "--mappings",
        m.to_str().unwrap(),
        "--out-dir",
        root.join("infra/dms").to_str().unwrap(),
        "--check",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ferry(&[
        "deploy",
        "config",
        "--mappings",
        m.to_str().unwrap(),
        "--out",
        root.join("infra/generated/deploy.json").to_str().unwrap(),
        "--check",
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_mapping_change_makes_the_generated_files_stale_until_regenerated() {
    let dir = TempDir::new("deploy-stale");
    let maps = dir.path().join("mappings");
    std::fs::create_dir_all(&maps).unwrap();
    let text = std::fs::read_to_string(mappings_dir().join("slots-account.json")).unwrap();
    std::fs::write(maps.join("slots-account.json"), &text).unwrap();
    let out = dir.path().join("dms");
    let args = |check: bool| {
        let mut a = vec![
            "dms".to_owned(),
            "table-mappings".into(),
            "--mappings".into(),
            maps.display().to_string(),
            // The old spelling of --out-dir, kept as an alias for one release.
            "--out".into(),
            out.display().to_string(),
        ];
        if check {
            a.push("--check".into());
        }
        a
    };
    let run = |check: bool| {
        let a = args(check);
        ferry(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert_eq!(run(true).0, 1, "missing files are stale");
    assert_eq!(run(false).0, 0);
    assert_eq!(run(true).0, 0);
    // An analyst disables a table: the DMS selection must change with it.
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tables = doc["tables"].as_object_mut().unwrap();
    let first = tables.keys().next().unwrap().clone();
    tables[&first]["enabled"] = serde_json::json!(false);
    std::fs::write(
        maps.join("slots-account.json"),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .unwrap();
    let (code, _, err) = run(true);
    assert_eq!(code, 1);
    assert!(
        err.contains("slots-account.table-mappings.json") && err.contains("regenerate with"),
        "{err}"
    );
    assert_eq!(run(false).0, 0);
    let generated: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("slots-account.table-mappings.json")).unwrap(),
    )
    .unwrap();
    let (schema, table) = first.split_once('.').unwrap();
    let rules = generated["rules"].as_array().unwrap();
    assert!(
        !rules
            .iter()
            .any(|r| r["object-locator"]["schema-name"] == schema
                && r["object-locator"]["table-name"] == table),
        "{first} is still selected"
    );
    // One selection and one change-sequence rule per table still enabled.
    assert_eq!(
        rules.len(),
        2 * (tables_count(&text) - 1 - disabled_count(&text))
    );
}

fn tables_count(text: &str) -> usize {
    let doc: serde_json::Value = serde_json::from_str(text).unwrap();
    doc["tables"].as_object().unwrap().len()
}

fn disabled_count(text: &str) -> usize {
    let doc: serde_json::Value = serde_json::from_str(text).unwrap();
    doc["tables"]
        .as_object()
        .unwrap()
        .values()
        .filter(|t| t["enabled"] == false)
        .count()
}

#[test]
fn bucket_notifications_cover_every_source_folder() {
    let catalog = Catalog::load_dir(&mappings_dir()).unwrap();
    let doc = ferry_core::deploy::bucket_notification(
        &catalog,
        "acme-casino-dms-cdc",
        "dev",
        "arn:aws:sqs:ap-northeast-2:1:ferry-dev-loader",
    );
    let prefixes: BTreeSet<String> = doc["QueueConfigurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            q["Filter"]["Key"]["FilterRules"][0]["Value"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let wanted: BTreeSet<String> = catalog.sources().iter().map(|s| s.prefix()).collect();
    assert_eq!(prefixes, wanted);
}

#[test]
fn a_dev_deploy_can_never_redirect_productions_events() {
    use serde_json::json;
    let catalog = Catalog::load_dir(&mappings_dir()).unwrap();
    let bucket = "acme-casino-dms-cdc";
    let prod_queue = "arn:aws:sqs:ap-northeast-2:1:ferry-prod-loader";
    let dev_queue = "arn:aws:sqs:ap-northeast-2:1:ferry-dev-loader";
    let merge = |current: &serde_json::Value, stage: &str, queue: &str, take_over: bool| {
        ferry_core::deploy::merge_bucket_notification(
            &catalog, current, bucket, stage, queue, take_over,
        )
    };
    // Someone else's notification on an unrelated prefix is kept.
    let other = json!({"Id": "audit", "QueueArn": "arn:aws:sqs:ap-northeast-2:1:audit",
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "audit/"}]}}});
    let empty = json!({"QueueConfigurations": [other.clone()]});
    let prod = merge(&empty, "prod", prod_queue, false).unwrap();
    let entries = prod["QueueConfigurations"].as_array().unwrap();
    assert!(entries.contains(&other));
    assert!(entries.iter().filter(|e| e["Id"] != "audit").all(
        |e| e["QueueArn"] == prod_queue && e["Id"].as_str().unwrap().starts_with("ferry-prod-")
    ));
    // prod owns the folders now: dev is refused and nothing changes.
    let refused = merge(&prod, "dev", dev_queue, false).unwrap_err();
    assert!(
        refused.0.contains("stage prod") && refused.0.contains("stage dev does not take them"),
        "{refused}"
    );
    // prod again replaces its own entries (idempotent).
    assert_eq!(merge(&prod, "prod", prod_queue, false).unwrap(), prod);
    // Entries written before ids named the stage belong to prod.
    let legacy = json!({"QueueConfigurations": [{"Id": "ferry-slots-account", "QueueArn": prod_queue,
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "slots/account/"}]}}}]});
    assert!(merge(&legacy, "dev", dev_queue, false).is_err());
    let upgraded = merge(&legacy, "prod", prod_queue, false).unwrap();
    assert!(
        !upgraded.to_string().contains("\"ferry-slots-account\""),
        "{upgraded}"
    );
    // A configuration that is not ferry's on an overlapping prefix is never silently replaced.
    let foreign = json!({"QueueConfigurations": [{"Id": "etl", "QueueArn": "arn:aws:sqs:ap-northeast-2:1:etl",
        "Events": ["s3:ObjectCreated:Put"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "slots/"}]}}}]});
    assert!(
        merge(&foreign, "prod", prod_queue, false)
            .unwrap_err()
            .0
            .contains("not ferry's")
    );
    // Moving a bucket to another stage on purpose.
    let moved = merge(&prod, "dev", dev_queue, true).unwrap();
    assert!(
        moved["QueueConfigurations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["Id"] != "audit")
            .all(|e| e["QueueArn"] == dev_queue)
    );
    // The CLI says so and exits 1.
    let dir = TempDir::new("deploy-notification");
    let current = dir.write("current.json", &prod.to_string());
    let (code, _, err) = ferry(&[
        "deploy",
        "bucket-notification",
        "--mappings",
        mappings_dir().to_str().unwrap(),
        "--bucket",
        bucket,
        "--stage",
        "dev",
        "--queue-arn",
        dev_queue,
        "--current",
        current.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("stage prod"), "{err}");
}
