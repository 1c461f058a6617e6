//! End-to-end tests of stage families (`foreach:`), driving the binary on toy stages.

mod util;

use util::Project;

/// `train` is a family of four members; `join` takes them all (`toy_map` needs many `data`), `pick` one.
const PIPELINE: &str = "\
dataset:
  root: data
stages:
  - name: src
    kind: toy_source
    params:
      value: abc
      size: 100
  - name: train
    kind: toy_map
    inputs: [src]
    foreach:
      salt: [x, y]
      sleep_ms: [0, 1]
    params:
      fail: false
  - name: join
    kind: toy_map
    inputs: [train]
  - name: pick
    kind: toy_map
    inputs: ['train[salt=y,sleep_ms=0]']
    params:
      salt: p
";

const MEMBERS: [&str; 4] = [
    "train[salt=x,sleep_ms=0]",
    "train[salt=x,sleep_ms=1]",
    "train[salt=y,sleep_ms=0]",
    "train[salt=y,sleep_ms=1]",
];

fn project(pipeline: &str) -> Project {
    let p = Project::new(pipeline);
    p.add_toy_dataset();
    p
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The stage names of a lineage tree's direct inputs, in order.
fn lineage_inputs(p: &Project, stage: &str) -> Vec<String> {
    let run = p.run(&["lineage", stage, "--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let tree: serde_json::Value = serde_json::from_str(&run.stdout).expect("lineage JSON");
    tree["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| i["stage"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_family_expands_into_named_members_with_their_params() {
    let p = project(PIPELINE);
    let dag = p.run(&["dag"]);
    assert_eq!(dag.code, 0, "{}", dag.all());
    for member in MEMBERS {
        assert!(
            dag.stdout.contains(&format!("{member} (toy_map) <- src\n")),
            "{}",
            dag.stdout
        );
    }
    assert!(
        dag.stdout
            .contains(&format!("join (toy_map) <- {}\n", MEMBERS.join(", "))),
        "{}",
        dag.stdout
    );
    let dot = p.run(&["dag", "--format", "dot"]);
    assert!(
        dot.stdout
            .contains("\"train[salt=x,sleep_ms=1]\" -> \"join\";"),
        "{}",
        dot.stdout
    );

    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let mut expected = vec!["src", "join", "pick"];
    expected.extend(MEMBERS);
    assert_eq!(run.ran(), sorted(&expected));
    // The lock and the manifests name members in full; each has its own params.
    let lock = p.lock_yaml();
    let params = &lock["stages"]["train[salt=y,sleep_ms=1]"]["params"];
    assert_eq!(params["salt"].as_str(), Some("y"), "{}", p.lock());
    assert_eq!(params["sleep_ms"].as_u64(), Some(1), "{}", p.lock());
    assert_eq!(params["fail"].as_bool(), Some(false), "{}", p.lock());
    let keys: std::collections::BTreeSet<String> = MEMBERS
        .iter()
        .map(|m| p.lock_field(m, &["key"]).expect("member key"))
        .collect();
    assert_eq!(keys.len(), 4, "members have distinct keys");
    assert_eq!(lineage_inputs(&p, "join"), MEMBERS);
    assert_eq!(lineage_inputs(&p, "pick"), ["train[salt=y,sleep_ms=0]"]);
    assert_eq!(p.run(&["verify"]).code, 0);
}

#[test]
fn adding_a_matrix_value_runs_only_the_new_members_and_the_many_consumer() {
    let p = project(PIPELINE);
    assert_eq!(p.run(&["run"]).code, 0);
    p.write_config(&p.config().replace("salt: [x, y]", "salt: [x, y, z]"));
    let status = p.run(&["status"]);
    assert_eq!(status.code, 1);
    assert!(
        status
            .status_line("train[salt=z,sleep_ms=1]")
            .contains("never run"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .status_line("join")
            .contains("upstream `train[salt=z,sleep_ms=0]` is stale"),
        "{}",
        status.stdout
    );
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.line("join")
            .contains("ran (input `train[salt=z,sleep_ms=0]` added"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.ran(),
        sorted(&[
            "train[salt=z,sleep_ms=0]",
            "train[salt=z,sleep_ms=1]",
            "join"
        ])
    );
    assert!(
        run.line("pick").contains("cached (up to date)"),
        "{}",
        run.stdout
    );
    assert!(
        run.line("train[salt=x,sleep_ms=0]")
            .contains("cached (up to date)"),
        "{}",
        run.stdout
    );
}

#[test]
fn until_and_force_take_a_member_or_a_whole_family() {
    let p = project(PIPELINE);
    let one = p.run(&["run", "--until", "train[salt=y,sleep_ms=0]"]);
    assert_eq!(one.code, 0, "{}", one.all());
    assert_eq!(one.ran(), sorted(&["src", "train[salt=y,sleep_ms=0]"]));
    let family = p.run(&["run", "--until", "train"]);
    assert_eq!(family.code, 0, "{}", family.all());
    assert_eq!(
        family.ran(),
        sorted(&[
            "train[salt=x,sleep_ms=0]",
            "train[salt=x,sleep_ms=1]",
            "train[salt=y,sleep_ms=1]"
        ])
    );
    assert!(!family.stdout.contains("join:"), "{}", family.stdout);
    assert_eq!(p.run(&["run"]).ran(), sorted(&["join", "pick"]));

    let forced = p.run(&["run", "--force", "train"]);
    assert_eq!(forced.code, 0, "{}", forced.all());
    assert_eq!(forced.ran(), sorted(&MEMBERS));
    assert!(
        forced.line("join").contains("cached (up to date)"),
        "bit-identical members leave the consumer's key alone: {}",
        forced.stdout
    );
    let forced = p.run(&["run", "--force", "train[salt=x,sleep_ms=1]"]);
    assert_eq!(forced.ran(), ["train[salt=x,sleep_ms=1]"]);

    let typo = p.run(&["run", "--until", "trian"]);
    assert_eq!(typo.code, 2);
    assert!(
        typo.stderr
            .contains("unknown stage `trian` (did you mean `train`?)"),
        "{}",
        typo.all()
    );
}

#[test]
fn status_and_lineage_take_a_member_or_a_whole_family() {
    let p = project(PIPELINE);
    assert_eq!(p.run(&["run"]).code, 0);
    p.write_config(&p.config().replace("salt: p", "salt: q"));
    assert_eq!(p.run(&["status"]).code, 1, "pick is stale");

    let member = p.run(&["status", "train[salt=x,sleep_ms=0]"]);
    assert_eq!(member.code, 0, "{}", member.all());
    assert_eq!(member.stdout.lines().count(), 1, "{}", member.stdout);
    assert!(
        member
            .status_line("train[salt=x,sleep_ms=0]")
            .contains("up to date"),
        "{}",
        member.stdout
    );
    let family = p.run(&["status", "--json", "train"]);
    assert_eq!(family.code, 0, "{}", family.all());
    let json: serde_json::Value = serde_json::from_str(&family.stdout).expect("status JSON");
    let shown: Vec<&str> = json["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert_eq!(shown, MEMBERS);
    assert_eq!(p.run(&["status", "pick"]).code, 1);

    let lineage = p.run(&["lineage", "train[salt=x,sleep_ms=0]"]);
    assert_eq!(lineage.code, 0, "{}", lineage.all());
    assert!(
        lineage
            .stdout
            .starts_with("train[salt=x,sleep_ms=0] (toy_map) key "),
        "{}",
        lineage.stdout
    );
    assert!(
        lineage
            .stdout
            .contains(r#"params {"fail":false,"salt":"x","sleep_ms":0}"#),
        "{}",
        lineage.stdout
    );
    assert!(
        lineage.stdout.contains("  src (toy_source) key "),
        "{}",
        lineage.stdout
    );
    let all = p.run(&["lineage", "train", "--json"]);
    assert_eq!(all.code, 0, "{}", all.all());
    let trees: serde_json::Value = serde_json::from_str(&all.stdout).expect("lineage JSON");
    let roots: Vec<&str> = trees
        .as_array()
        .expect("one tree per member")
        .iter()
        .filter_map(|t| t["stage"].as_str())
        .collect();
    assert_eq!(roots, MEMBERS);
}

#[test]
fn a_many_consumer_sees_members_in_expansion_order_whatever_the_key_order() {
    let p = project(PIPELINE);
    assert_eq!(p.run(&["run"]).code, 0);
    let swapped = project(&PIPELINE.replace(
        "      salt: [x, y]\n      sleep_ms: [0, 1]\n",
        "      sleep_ms: [0, 1]\n      salt: [x, y]\n",
    ));
    assert_ne!(swapped.config(), p.config());
    assert_eq!(swapped.run(&["run"]).code, 0);
    assert_eq!(lineage_inputs(&swapped, "join"), MEMBERS);
    for stage in ["join", "pick"] {
        assert_eq!(
            swapped.lock_field(stage, &["outputs", "data"]),
            p.lock_field(stage, &["outputs", "data"]),
            "{stage}"
        );
    }
    // Flow style, same matrix: same members, nothing to run.
    p.write_config(&p.config().replace(
        "    foreach:\n      salt: [x, y]\n      sleep_ms: [0, 1]\n",
        "    foreach: {sleep_ms: [0, 1], salt: [x, y]}\n",
    ));
    let again = p.run(&["run"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(again.ran().is_empty(), "{}", again.stdout);
}

#[test]
fn a_member_and_an_identical_plain_stage_share_one_result() {
    let p = project(&format!(
        "{PIPELINE}  - name: same\n    kind: toy_map\n    inputs: [src]\n    params: {{salt: y, sleep_ms: 1}}\n"
    ));
    let run = p.run(&["run", "-j", "1"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        p.lock_field("same", &["key"]),
        p.lock_field("train[salt=y,sleep_ms=1]", &["key"])
    );
    assert!(run.line("same").contains("cached"), "{}", run.stdout);
}

/// `genrelab dag` on `pipeline`: the errors it prints (it must fail).
fn errors(pipeline: &str) -> String {
    let p = project(pipeline);
    let run = p.run(&["dag"]);
    assert_eq!(run.code, 2, "{}", run.all());
    run.stderr
}

#[test]
fn family_errors_point_at_the_family_lines() {
    let cases: [(&str, &str, &str); 9] = [
        (
            "      salt: [x, y]\n",
            "      slat: [x, y]\n",
            "pipeline.yaml:13:7: stage `train` (toy_map): foreach: unknown field `slat`",
        ),
        (
            "      fail: false\n",
            "      fail: false\n      salt: x\n",
            "pipeline.yaml:13:7: stage `train`: foreach: `salt` is also set under `params:`",
        ),
        (
            "      salt: [x, y]\n",
            "      salt: []\n",
            "pipeline.yaml:13:7: stage `train`: foreach: `salt` has no values",
        ),
        (
            "      salt: [x, y]\n",
            "      salt: [x, {a: 1}]\n",
            "pipeline.yaml:13:7: stage `train`: foreach: `salt`: values must be scalars",
        ),
        (
            "      salt: [x, y]\n",
            "      salt: [x, 'y z']\n",
            "pipeline.yaml:13:7: stage `train`: foreach: `salt`: \"y z\" cannot be part of a member name",
        ),
        (
            "      salt: [x, y]\n",
            "      salt: [x, y]\n      signal: [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, u, v, w, x, y, z]\n      panic: [true, false, null, 1, 2, 3, 4, 5, 6, 7]\n",
            "pipeline.yaml:12:5: stage `train`: foreach: expands into more than 1024 members",
        ),
        (
            "  - name: join\n",
            "  - name: join[all]\n",
            "pipeline.yaml:17:5: stage name `join[all]` contains `[`",
        ),
        (
            "'train[salt=y,sleep_ms=0]'",
            "'train[salt=y,sleep_ms=2]'",
            "pipeline.yaml:22:15: stage `pick`: input `train[salt=y,sleep_ms=2]` is not a stage in this pipeline (did you mean `train[salt=y,sleep_ms=0]`?)",
        ),
        (
            "    inputs: [train]\n",
            "    inputs: [train, 'train[salt=x,sleep_ms=1]']\n",
            "pipeline.yaml:19:14: stage `join`: input `train[salt=x,sleep_ms=1]` is listed twice",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(PIPELINE.contains(from), "{from}");
        let err = errors(&PIPELINE.replacen(from, to, 1));
        assert!(err.contains(expected), "{to}\n{err}");
        assert_eq!(err.matches(expected).count(), 1, "reported once: {err}");
    }
    // A family name stands for all members, which a kind taking one artifact cannot accept.
    let err = errors(
        "dataset:\n  root: data\nstages:\n  - name: ingest\n    kind: ingest\n    inputs: [dataset]\n    foreach:\n      sample_rate: [22050, 16000]\n  - name: split\n    kind: split\n    inputs: [ingest]\n",
    );
    assert!(
        err.contains(
            "pipeline.yaml:11:14: stage `split` (split) takes one `tracks`, but input `ingest` is a family of 2 stages"
        ),
        "{err}"
    );
    assert!(err.contains("such as `ingest[sample_rate=22050]`"), "{err}");
}
