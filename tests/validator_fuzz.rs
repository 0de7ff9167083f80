//! Generated malformed pipelines, fed to the validator in process with the real plugins
//! loaded from disk: every one is rejected with a located error, none panics. Random byte
//! mutations of valid pipelines must never panic either.
use std::panic::{catch_unwind, AssertUnwindSafe};

use petnas::pipeline::{self, Context};
use petnas::plugins::Registry;
use petnas_e2e::build_dir;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn ident(rng: &mut StdRng) -> String {
    let len = rng.random_range(3..10);
    (0..len).map(|_| rng.random_range(b'a'..=b'z') as char).collect()
}

/// A valid pipeline with random names and values, in block or flow style.
struct Doc {
    name: String,
    ids: [String; 3],
    axis: String,
    lines: Vec<String>,
}

impl Doc {
    fn new(rng: &mut StdRng) -> Doc {
        let name = ident(rng);
        let ids = [format!("d{}", ident(rng)), format!("f{}", ident(rng)), format!("e{}", ident(rng))];
        let axis = ident(rng);
        let [a, b, c] = &ids;
        let n = rng.random_range(4..500);
        let steps = rng.random_range(1..100);
        let flow = rng.random_bool(0.5);
        let mut lines = vec![
            format!("name: {name}"),
            format!("defaults: {{device: cpu, seed: {}}}", rng.random_range(0..100)),
            "matrix:".to_string(),
            format!("  {axis}: [{}, {}]", rng.random_range(0..5), rng.random_range(5..10)),
            "stages:".to_string(),
        ];
        if flow {
            lines.push(format!(
                "  {a}: {{use: demo.data, with: {{n: {n}, separation: '${{matrix.{axis}}}'}}}}"
            ));
            lines.push(format!("  {b}: {{use: demo.fit, needs: [{a}], with: {{steps: {steps}}}}}"));
            lines.push(format!("  {c}: {{use: demo.evaluate, needs: [{a}, {b}]}}"));
        } else {
            for line in [
                format!("  {a}:"),
                "    use: demo.data".into(),
                "    with:".into(),
                format!("      n: {n}"),
                format!("      separation: ${{matrix.{axis}}}"),
                format!("  {b}:"),
                "    use: demo.fit".into(),
                format!("    needs: [{a}]"),
                "    with:".into(),
                format!("      steps: {steps}"),
                format!("  {c}:"),
                "    use: demo.evaluate".into(),
                format!("    needs:\n      - {a}\n      - {b}"),
            ] {
                lines.push(line);
            }
        }
        Doc { name, ids, axis, lines }
    }

    fn text(&self) -> String {
        self.lines.join("\n") + "\n"
    }

    fn replace(&mut self, from: &str, to: &str) {
        let text = self.text().replacen(from, to, 1);
        self.lines = text.lines().map(str::to_string).collect();
    }
}

/// Breaks the document in one of many ways; returns what the error must say.
fn break_doc(doc: &mut Doc, rng: &mut StdRng) -> &'static str {
    let [a, b, c] = doc.ids.clone();
    match rng.random_range(0..20) {
        0 => {
            let key = format!("x{}", ident(rng));
            doc.lines.insert(1, format!("{key}: 1"));
            "unknown top-level key"
        }
        1 => {
            doc.replace("use: demo.fit", &format!("use: demo.{}", ident(rng)));
            "unknown stage kind"
        }
        2 => {
            let option = ident(rng);
            let i = doc.lines.iter().position(|l| l.contains("steps:")).unwrap();
            if doc.lines[i].contains('{') {
                doc.lines[i] = doc.lines[i].replacen("steps:", &format!("{option}: 1, steps:"), 1);
            } else {
                doc.lines.insert(i, format!("      {option}: 1"));
            }
            "unknown option"
        }
        3 => {
            let bad = ["'many'", "[1, 2]", "{a: 1}", "true", "1.5", "null"][rng.random_range(0..6)];
            let steps_line = doc.lines.iter().position(|l| l.contains("steps:")).unwrap();
            let line = doc.lines[steps_line].clone();
            let start = line.find("steps: ").unwrap() + "steps: ".len();
            let end =
                line[start..].find(|ch: char| !ch.is_ascii_digit()).map(|e| start + e).unwrap_or(line.len());
            doc.lines[steps_line] = format!("{}{bad}{}", &line[..start], &line[end..]);
            "option `steps` of stage"
        }
        4 => {
            doc.replace(&format!("needs: [{a}]"), &format!("needs: [{}]", ident(rng)));
            "which is not a stage of this pipeline"
        }
        5 => {
            doc.replace("use: demo.data", &format!("use: demo.data, needs: [{c}]"));
            if doc.text().contains(&format!("use: demo.data, needs: [{c}]\n    with"))
                || !doc.text().contains('{')
            {
                doc.replace(
                    &format!("use: demo.data, needs: [{c}]"),
                    &format!("use: demo.data\n    needs: [{c}]"),
                );
            }
            "cycle in `needs`"
        }
        6 => {
            doc.replace(&format!("matrix.{}", doc.axis.clone()), &format!("matrix.{}x", doc.axis));
            "unknown matrix axis"
        }
        7 => {
            doc.replace("{use: demo.evaluate, ", "{");
            doc.replace("    use: demo.evaluate\n", "");
            "has no `use`"
        }
        8 => {
            let name = doc.name.clone();
            doc.replace(&format!("name: {name}"), &format!("name: '{name}/..'"));
            "pipeline name"
        }
        9 => {
            doc.replace("device: cpu", &format!("device: {}", ident(rng)));
            "`device` must be"
        }
        10 => {
            let axis = doc.axis.clone();
            doc.replace(&format!("  {axis}: ["), &format!("  {axis}: [{{k: v}}, "));
            "matrix values must be"
        }
        11 => {
            doc.lines.push(format!("  {b}: {{use: demo.fit}}"));
            "duplicate key"
        }
        12 => {
            // A flow collection never closed.
            let i = rng.random_range(1..doc.lines.len());
            doc.lines.insert(i, "broken: {[1, 2".to_string());
            "invalid YAML"
        }
        13 => {
            doc.lines.push(format!("bomb: &b0 [{}]", ["x"; 10].join(", ")));
            for i in 1..8 {
                doc.lines.push(format!("bomb{i}: &b{i} [{}]", vec![format!("*b{}", i - 1); 10].join(", ")));
            }
            "alias bomb"
        }
        14 => {
            let depth = rng.random_range(65..200);
            doc.lines.push(format!("deep: {}{}", "[".repeat(depth), "]".repeat(depth)));
            "nesting deeper"
        }
        15 => {
            let path = ["../../../x.tsv", "/etc/x.tsv", "a/../../../../b.tsv"][rng.random_range(0..3)];
            doc.replace(
                "use: demo.evaluate",
                &format!("use: demo.evaluate, with: {{predictions: '{path}'}}"),
            );
            if !doc.text().contains("{use: demo.evaluate") {
                doc.replace(
                    &format!(", with: {{predictions: '{path}'}}"),
                    &format!("\n    with: {{predictions: '{path}'}}"),
                );
            }
            "would write outside the run folder"
        }
        16 => {
            doc.lines.insert(1, "description: !!binary aGVsbG8=".to_string());
            "tag"
        }
        17 => {
            doc.lines = vec![format!("- {}", ident(rng)), format!("- {}", ident(rng))];
            "a pipeline is a mapping"
        }
        18 => {
            let start = doc.lines.iter().position(|l| l == "stages:").unwrap();
            doc.lines.truncate(start);
            "has no `stages`"
        }
        _ => {
            doc.replace(&format!("needs: [{a}, {b}]"), &format!("needs: [{b}]"));
            doc.replace(&format!("needs:\n      - {a}\n      - {b}"), &format!("needs: [{b}]"));
            "needs an input of kind `dataset`"
        }
    }
}

fn registry() -> Registry {
    let registry = Registry::load(&[build_dir(), petnas_e2e::demo_plugin_dir()]);
    assert!(registry.stage("demo.data").is_some(), "the demo plugins load: {:?}", registry.refused);
    registry
}

#[test]
fn generated_valid_documents_pass() {
    let registry = registry();
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let doc = Doc::new(&mut rng);
        if let Err(e) = pipeline::parse(&doc.text(), "gen.yaml", &registry, &Context::default()) {
            panic!("a valid document was rejected:\n{}\n{e}", doc.text());
        }
    }
}

#[test]
fn a_thousand_malformed_documents_are_each_rejected_with_a_located_error() {
    let registry = registry();
    let mut rng = StdRng::seed_from_u64(2024);
    let mut classes = std::collections::BTreeMap::new();
    for _ in 0..1500 {
        let mut doc = Doc::new(&mut rng);
        let expected = break_doc(&mut doc, &mut rng);
        let text = doc.text();
        let result = catch_unwind(AssertUnwindSafe(|| {
            pipeline::parse(&text, "gen.yaml", &registry, &Context::default())
        }));
        let errors = match result {
            Err(_) => panic!("the validator panicked on:\n{text}"),
            Ok(Ok(_)) => panic!("accepted a malformed document (expected: {expected}):\n{text}"),
            Ok(Err(errors)) => errors,
        };
        let rendered = errors.to_string();
        assert!(rendered.contains(expected), "expected `{expected}` for:\n{text}\ngot:\n{rendered}");
        for d in &errors.0 {
            assert_eq!(d.file, "gen.yaml");
            assert!(d.pos.is_some(), "no location: {d}\nfor:\n{text}");
        }
        *classes.entry(expected).or_insert(0) += 1;
    }
    assert_eq!(classes.len(), 20, "every kind of break was generated: {classes:?}");
}

#[test]
fn random_mutations_never_panic() {
    let registry = registry();
    let mut rng = StdRng::seed_from_u64(99);
    let alphabet: Vec<char> = " \n\t:-[]{},'\"&*!|>#%@`$.0123456789abcxyz".chars().collect();
    let mut rejected = 0;
    for _ in 0..3000 {
        let mut chars: Vec<char> = Doc::new(&mut rng).text().chars().collect();
        for _ in 0..rng.random_range(1..6) {
            let i = rng.random_range(0..chars.len());
            match rng.random_range(0..3) {
                0 => {
                    chars.remove(i);
                }
                1 => chars.insert(i, alphabet[rng.random_range(0..alphabet.len())]),
                _ => chars[i] = alphabet[rng.random_range(0..alphabet.len())],
            }
        }
        let text: String = chars.into_iter().collect();
        match catch_unwind(AssertUnwindSafe(|| {
            pipeline::parse(&text, "mut.yaml", &registry, &Context::default())
        })) {
            Err(_) => panic!("the validator panicked on:\n{text}"),
            Ok(Err(_)) => rejected += 1,
            Ok(Ok(_)) => {}
        }
    }
    assert!(rejected > 1000, "most mutations break a pipeline ({rejected} rejected)");
}
