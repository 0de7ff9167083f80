//! Running pipelines: parallel cells, failures confined to their downstream, reuse of
//! complete stages, `--force`, and resuming after SIGKILL or Ctrl-C.
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use petnas_e2e::Scratch;

/// Two cells of demo stages. One libtorch thread per stage: tests run side by side, and
/// oversubscribed OpenMP threads would slow everything down.
fn pipeline(steps: u64) -> String {
    format!(
        "name: exec
defaults: {{threads: 1}}
matrix:
  sep: [0.5, 2.0]
stages:
  data: {{use: demo.data, with: {{n: 256, separation: '${{matrix.sep}}'}}}}
  fit: {{use: demo.fit, needs: [data], with: {{steps: {steps}}}}}
  evaluate: {{use: demo.evaluate, needs: [data, fit]}}
"
    )
}

const CELLS: [&str; 2] = ["sep=0.5", "sep=2.0"];
const STAGES: [&str; 3] = ["data", "fit", "evaluate"];

fn summary_line(stdout: &str) -> &str {
    stdout.lines().last().unwrap_or("")
}

fn started(s: &Scratch, cell: &str, stage: &str) -> f64 {
    s.read_json(&s.stage_dir("exec", cell, stage).join("stage.json"))["started_unix"]
        .as_f64()
        .expect("started_unix")
}

#[test]
fn runs_then_reuses_complete_stages_and_recomputes_what_changed() {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline(200));
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        summary_line(&run.stdout).starts_with("6 done, 0 reused, 0 failed, 0 skipped, 0 cancelled"),
        "{}",
        run.stdout
    );
    for cell in CELLS {
        for stage in STAGES {
            let dir = s.stage_dir("exec", cell, stage);
            for file in ["stage.json", "outputs.json", "log.jsonl"] {
                assert!(dir.join(file).exists(), "{} has no {file}", dir.display());
            }
        }
    }
    let metrics = s.read_json(&s.stage_dir("exec", "sep=2.0", "evaluate").join("metrics.json"));
    assert!(metrics["accuracy"].as_f64().unwrap() > 0.9, "well separated classes are learnt: {metrics}");
    let predictions =
        std::fs::read_to_string(s.stage_dir("exec", "sep=2.0", "evaluate").join("predictions.tsv")).unwrap();
    assert_eq!(predictions.lines().count(), 1 + 64, "header and one line per test example");
    let run_json = s.read_json(&s.path().join("runs/exec/run.json"));
    assert_eq!(run_json["status"], "ok");
    assert_eq!(run_json["stages"].as_array().unwrap().len(), 6);
    assert!(s.path().join("runs/exec/resolved.yaml").exists());

    let again = s.petnas(&["run", "p.yaml"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(summary_line(&again.stdout).starts_with("0 done, 6 reused"), "{}", again.stdout);

    // A changed option recomputes its stage and what depends on it, nothing else.
    let data_started = started(&s, "sep=0.5", "data");
    s.write("p.yaml", &pipeline(150));
    let changed = s.petnas(&["run", "p.yaml"]);
    assert_eq!(changed.code, 0, "{}", changed.stderr);
    assert!(summary_line(&changed.stdout).starts_with("4 done, 2 reused"), "{}", changed.stdout);
    assert_eq!(started(&s, "sep=0.5", "data"), data_started);
    let fit = s.read_json(&s.stage_dir("exec", "sep=0.5", "fit").join("outputs.json"));
    assert_eq!(fit["meta"]["steps"], 150);
}

#[test]
fn force_recomputes_from_a_stage_on() {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline(100));
    assert_eq!(s.petnas(&["run", "p.yaml"]).code, 0);
    let data_started = started(&s, "sep=2.0", "data");
    let fit_started = started(&s, "sep=2.0", "fit");
    let forced = s.petnas(&["run", "p.yaml", "--force", "fit"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(summary_line(&forced.stdout).starts_with("4 done, 2 reused"), "{}", forced.stdout);
    assert_eq!(started(&s, "sep=2.0", "data"), data_started);
    assert!(started(&s, "sep=2.0", "fit") > fit_started);
    let record = std::fs::read(s.path().join("runs/exec/run.json")).unwrap();
    let unknown = s.petnas(&["run", "p.yaml", "--force", "fitt"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("--force fitt: no such stage (stages: data, fit, evaluate)"),
        "{}",
        unknown.stderr
    );
    assert_eq!(
        std::fs::read(s.path().join("runs/exec/run.json")).unwrap(),
        record,
        "a refused --force leaves the finished run's record as it was"
    );
    let report = s.read_json(&s.path().join("runs/exec/run.json"));
    assert_eq!((report["status"].as_str(), report["stages"].as_array().map(Vec::len)), (Some("ok"), Some(6)));
}

#[test]
fn a_failing_cell_stops_only_what_depends_on_it() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: exec
matrix:
  n: [256, 2]
stages:
  data: {use: demo.data, with: {n: '${matrix.n}'}}
  fit: {use: demo.fit, needs: [data], with: {steps: 50}}
  evaluate: {use: demo.evaluate, needs: [data, fit]}
",
    );
    let run = s.petnas(&["run", "p.yaml", "--jobs", "2"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert!(rows.iter().any(|r| r.starts_with("n=2    data      FAILED") && r.ends_with("`n` must be at least 4, got 2")), "{}", run.stdout);
    assert!(
        rows.iter()
            .any(|r| r.starts_with("n=2    fit       skipped") && r.ends_with("`data` did not complete")),
        "{}",
        run.stdout
    );
    assert!(rows.iter().any(|r| r.starts_with("n=2    evaluate  skipped")), "{}", run.stdout);
    assert!(summary_line(&run.stdout).starts_with("3 done, 0 reused, 1 failed, 2 skipped"), "{}", run.stdout);
    assert!(s.stage_dir("exec", "n=256", "evaluate").join("metrics.json").exists());
    // No half-written results of the failed stage, no temporary folders left.
    let cell = s.path().join("runs/exec/n=2");
    let left: Vec<_> = std::fs::read_dir(&cell).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(s.read_json(&s.path().join("runs/exec/run.json"))["status"], "failed");
}

fn interval(s: &Scratch, cell: &str, stage: &str) -> (f64, f64) {
    let record = s.read_json(&s.stage_dir("exec", cell, stage).join("stage.json"));
    let start = record["started_unix"].as_f64().unwrap();
    (start, start + record["seconds"].as_f64().unwrap())
}

fn overlap(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[test]
fn independent_cells_run_in_parallel_up_to_jobs() {
    let s = Scratch::new();
    // libtorch threads are divided between parallel stages.
    s.write("p.yaml", &pipeline(20_000).replace("threads: 1", "threads: 4"));
    let run = s.petnas(&["run", "p.yaml", "--jobs", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        overlap(interval(&s, CELLS[0], "fit"), interval(&s, CELLS[1], "fit")),
        "the two fits ran one after the other"
    );
    let record = s.read_json(&s.path().join("runs/exec/run.json"));
    assert_eq!(record["threads_per_job"].as_u64(), Some(2));

    let serial = Scratch::new();
    serial.write("p.yaml", &pipeline(20_000));
    assert_eq!(serial.petnas(&["run", "p.yaml", "--jobs", "1"]).code, 0);
    assert!(!overlap(interval(&serial, CELLS[0], "fit"), interval(&serial, CELLS[1], "fit")));
}

/// The summary table and run.json name the device each stage ran on; GPU placement flags
/// are refused where they cannot apply, before the run folder is touched.
#[test]
fn the_summary_names_each_stages_device_and_gpu_flags_are_checked() {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline(50));
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let header = run.stdout.lines().next().unwrap();
    assert!(header.split_whitespace().eq(["cell", "stage", "status", "time", "device", "why"]), "{header}");
    let fit = run.stdout.lines().find(|l| l.starts_with("sep=0.5") && l.contains(" fit ")).unwrap();
    assert!(fit.split_whitespace().collect::<Vec<_>>()[2..].starts_with(&["done"]), "{fit}");
    assert!(fit.split_whitespace().nth(4) == Some("cpu"), "{fit}");
    let record = s.read_json(&s.path().join("runs/exec/run.json"));
    assert_eq!(record["device"], "cpu");
    assert!(record["stages"].as_array().unwrap().iter().all(|o| o["device"] == "cpu"), "{record}");
    let again = s.petnas(&["run", "p.yaml"]);
    let reused = again.stdout.lines().find(|l| l.starts_with("sep=2.0") && l.contains(" evaluate ")).unwrap();
    assert!(
        reused.split_whitespace().eq([
            "sep=2.0",
            "evaluate",
            "reused",
            reused.split_whitespace().nth(3).unwrap(),
            "cpu"
        ]),
        "a reused stage names the device that computed it: {reused}"
    );

    s.write("p.yaml", &pipeline(50).replace("threads: 1", "threads: 1, device: cpu"));
    let run = s.petnas(&["run", "p.yaml", "--devices", "cuda:0"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--devices spreads stages over GPUs, but the pipeline's `device` is `cpu`"),
        "{}",
        run.stderr
    );
    let run = s.petnas(&["run", "p.yaml", "--jobs-per-device", "2"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--jobs-per-device shares GPUs between stages, but this run is on the CPU"),
        "{}",
        run.stderr
    );
    if !tch::Cuda::is_available() {
        s.write("p.yaml", &pipeline(50));
        let run = s.petnas(&["run", "p.yaml", "--devices", "cuda:0,cuda:1"]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(
            run.stderr.contains("cuda:0 requested, but this machine has 0 CUDA device(s)"),
            "{}",
            run.stderr
        );
    }
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fit_in_flight(s: &Scratch, cell: &str) -> bool {
    std::fs::read_dir(s.path().join("runs/exec").join(cell))
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(".tmp-fit-")))
        .unwrap_or(false)
}

fn spawn(s: &Scratch, args: &[&str]) -> Child {
    s.command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn petnas")
}

#[test]
fn a_killed_run_resumes_and_ends_as_an_uninterrupted_one() {
    let steps = 30_000;
    let s = Scratch::new();
    s.write("p.yaml", &pipeline(steps));
    let mut child = spawn(&s, &["run", "p.yaml"]);
    wait_for("the first fit to start", Duration::from_secs(60), || fit_in_flight(&s, CELLS[0]));
    std::thread::sleep(Duration::from_millis(200));
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    assert!(s.stage_dir("exec", CELLS[0], "data").join("stage.json").exists(), "completed stage lost");
    assert!(!s.stage_dir("exec", CELLS[0], "fit").exists(), "a stage in flight must not appear complete");

    let resumed = s.petnas(&["run", "p.yaml"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(resumed.stdout.lines().any(|r| r.starts_with("sep=0.5  data      reused")), "{}", resumed.stdout);
    let leftovers: Vec<_> = std::fs::read_dir(s.path().join("runs/exec").join(CELLS[0]))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary folders of the killed run remain: {leftovers:?}");

    let reference = Scratch::new();
    reference.write("p.yaml", &pipeline(steps));
    assert_eq!(reference.petnas(&["run", "p.yaml"]).code, 0);
    for cell in CELLS {
        for stage in STAGES {
            let got = petnas_e2e::stage_outputs(&s.stage_dir("exec", cell, stage));
            let want = petnas_e2e::stage_outputs(&reference.stage_dir("exec", cell, stage));
            assert!(!want.is_empty());
            assert!(got == want, "{cell}/{stage} differs from an uninterrupted run");
        }
    }
}

#[test]
fn ctrl_c_stops_within_two_seconds_and_keeps_completed_stages() {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline(50_000_000));
    let mut child = spawn(&s, &["run", "p.yaml"]);
    wait_for("the fit to start", Duration::from_secs(60), || fit_in_flight(&s, CELLS[0]));
    let sent = Instant::now();
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let code = child.wait().unwrap().code();
    assert!(sent.elapsed() < Duration::from_secs(2), "took {:?} to stop", sent.elapsed());
    assert_eq!(code, Some(130));
    let record = s.read_json(&s.path().join("runs/exec/run.json"));
    assert_eq!(record["status"], "interrupted");
    assert!(s.stage_dir("exec", CELLS[0], "data").join("stage.json").exists());
    assert!(!s.stage_dir("exec", CELLS[0], "fit").exists());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(out.lines().any(|r| r.starts_with("sep=0.5  fit       cancelled")), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("interrupted: the ") && l.contains("the same command resumes")),
        "what was kept and how to resume: {out}"
    );
}

#[test]
fn two_runs_of_one_pipeline_do_not_share_a_run_folder() {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline(50_000_000));
    let mut first = spawn(&s, &["run", "p.yaml"]);
    wait_for("the fit to start", Duration::from_secs(60), || fit_in_flight(&s, CELLS[0]));
    let second = s.petnas(&["run", "p.yaml"]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(second.code, 2);
    assert!(second.stderr.contains("another petnas run is using"), "{}", second.stderr);
}

/// Where the filesystem keeps flocks per node, a petnas on another node is refused by the
/// heartbeat it keeps in the run folder; a stale heartbeat (its node died) is not.
#[test]
fn a_petnas_on_another_node_is_refused_by_its_heartbeat() {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline(50));
    std::fs::create_dir_all(s.path().join("runs/exec")).unwrap();
    let owner = s.path().join("runs/exec/.owner.json");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let held =
        |age: f64| serde_json::json!({"host": "gpu-node-17", "pid": 4242, "heartbeat_unix": now - age});
    std::fs::write(&owner, held(5.0).to_string()).unwrap();
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    // The age as petnas read it: 5 s, and a little more on a busy machine.
    let age = run
        .stderr
        .split("heartbeat is ")
        .nth(1)
        .and_then(|rest| rest.split("s old").next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        run.stderr.contains("petnas on gpu-node-17 (pid 4242) is using")
            && age.is_some_and(|a| (5..60).contains(&a)),
        "{}",
        run.stderr
    );
    assert!(!s.path().join("runs/exec/run.json").exists(), "nothing ran");

    std::fs::write(&owner, held(600.0).to_string()).unwrap();
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "a stale heartbeat does not hold the folder: {}", run.stderr);
    assert!(!owner.exists(), "the run gives the folder back when it ends");
}

#[test]
fn outputs_go_outside_the_run_folder_only_where_allowed() {
    let s = Scratch::new();
    let text = pipeline(50).replace(
        "evaluate: {use: demo.evaluate, needs: [data, fit]}",
        "evaluate: {use: demo.evaluate, needs: [data, fit], with: {predictions: 'exports/${matrix.sep}.tsv'}}",
    );
    s.write("p.yaml", &text.replace("exports/", &format!("{}/exports/", s.path().display())));
    let refused = s.petnas(&["run", "p.yaml"]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("would write outside the run folder"), "{}", refused.stderr);
    let allowed = s.petnas(&["run", "p.yaml", "--allow-write", "exports"]);
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert!(s.path().join("exports/2.0.tsv").exists());
}

/// A `budget`-like axis that only some stages read: `data` and `fit` are the same in both
/// cells, `evaluate` runs where `when` says, `refit` reads the axis.
const TWINS: &str = "name: twins
defaults: {threads: 1}
matrix:
  steps: [50, 100]
stages:
  data: {use: demo.data, with: {n: 128}}
  fit: {use: demo.fit, needs: [data], with: {steps: 200}}
  refit: {use: demo.fit, needs: [data], with: {steps: '${matrix.steps}'}}
  evaluate: {use: demo.evaluate, needs: [data, fit], when: {steps: 100}}
";

#[test]
fn cells_share_stages_their_axes_do_not_change_and_when_picks_the_cells_of_a_stage() {
    let s = Scratch::new();
    s.write("p.yaml", TWINS);
    let validate = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(
        validate.stdout.trim(),
        "p.yaml: ok (2 cell(s) × 4 stage(s), 7 stage runs)",
        "{}",
        validate.stderr
    );
    let run = s.petnas(&["run", "p.yaml", "--jobs", "2"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        summary_line(&run.stdout).starts_with("5 done, 2 reused, 0 failed"),
        "data and fit are computed once, refit in each cell:\n{}",
        run.stdout
    );
    assert!(!s.stage_dir("twins", "steps=50", "evaluate").exists(), "`when` leaves it out of steps=50");
    assert!(s.stage_dir("twins", "steps=100", "evaluate").join("metrics.json").exists());
    for stage in ["data", "fit"] {
        let files = |cell: &str| petnas_e2e::stage_outputs(&s.stage_dir("twins", cell, stage));
        assert_eq!(files("steps=50"), files("steps=100"), "{stage} is the same in both cells");
    }
    let refit = |cell: &str| s.read_json(&s.stage_dir("twins", cell, "refit").join("outputs.json"));
    assert_eq!(
        (refit("steps=50")["meta"]["steps"].clone(), refit("steps=100")["meta"]["steps"].clone()),
        (50.into(), 100.into())
    );

    // A cell added later takes the shared stages from a finished one, also when it runs
    // alone (`--only`) and the finished cells are not part of the run.
    s.write("p.yaml", &TWINS.replace("[50, 100]", "[50, 100, 150]"));
    let more = s.petnas(&["run", "p.yaml", "--only", "steps=150"]);
    assert_eq!(more.code, 0, "{}", more.stderr);
    assert!(summary_line(&more.stdout).starts_with("1 done, 2 reused"), "refit alone:\n{}", more.stdout);
    assert!(more.stderr.contains("reused from another cell (content key matches)"), "{}", more.stderr);
    for stage in ["data", "fit"] {
        let files = |cell: &str| petnas_e2e::stage_outputs(&s.stage_dir("twins", cell, stage));
        assert_eq!(files("steps=50"), files("steps=150"), "{stage} is copied, not recomputed");
    }
    let all = s.petnas(&["run", "p.yaml"]);
    assert!(summary_line(&all.stdout).starts_with("0 done, 10 reused"), "{}", all.stdout);

    // --force reruns a stage once and lets its twins copy it.
    let forced = s.petnas(&["run", "p.yaml", "--force", "fit"]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(
        summary_line(&forced.stdout).starts_with("2 done, 8 reused"),
        "fit once, then evaluate:\n{}",
        forced.stdout
    );
}

#[test]
fn when_is_checked_before_anything_runs() {
    let s = Scratch::new();
    let cases = [
        ("when: {step: 100}", "unknown matrix axis `step`"),
        ("when: {steps: 70}", "`when` names `70`, which is not a value of axis `steps`"),
        ("when: [100]", "`when` of stage `evaluate` must be a mapping of matrix axis → value or list of values, found a list"),
    ];
    for (when, expected) in cases {
        s.write("p.yaml", &TWINS.replace("when: {steps: 100}", when));
        let run = s.petnas(&["validate", "p.yaml"]);
        assert_eq!(run.code, 2, "{when}");
        assert!(run.stderr.contains(expected), "{when}: {}", run.stderr);
    }
    s.write(
        "p.yaml",
        &TWINS.replace(
            "fit: {use: demo.fit, needs: [data], with: {steps: 200}}",
            "fit: {use: demo.fit, needs: [data], with: {steps: 200}, when: {steps: 50}}",
        ),
    );
    let run = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(
            "stage `evaluate` runs in cell steps=100, where `fit`, which it needs, does not (its `when`)"
        ),
        "{}",
        run.stderr
    );
}

/// A full disk fails the stage that met it, naming the disk, with exit code 1 (not "bad
/// input"); what that stage had written is removed, the other cells finish, and run.json
/// records the run. The run folder is a 2 MiB tmpfs (the test needs root to mount it).
#[test]
fn a_full_disk_fails_the_stage_names_the_disk_and_leaves_nothing_half_written() {
    let s = Scratch::new();
    let disk = s.path().join("small-disk");
    std::fs::create_dir(&disk).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&disk)
        .output()
        .expect("run mount");
    if !mount.status.success() {
        eprintln!(
            "cannot mount a tmpfs ({}): the full-disk check did not run",
            String::from_utf8_lossy(&mount.stderr).trim()
        );
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            std::process::Command::new("umount").arg(self.0).status().ok();
        }
    }
    let _unmount = Unmount(&disk);
    s.write(
        "p.yaml",
        "name: exec
defaults: {threads: 1}
matrix:
  n: [20000, 256]
stages:
  data: {use: demo.data, with: {n: '${matrix.n}', dim: 64}}
  fit: {use: demo.fit, needs: [data], with: {steps: 20}}
  evaluate: {use: demo.evaluate, needs: [data, fit]}
",
    );
    let run = s.petnas(&["run", "p.yaml", "--runs-dir", "small-disk"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let failed = run.stdout.lines().find(|l| l.starts_with("n=20000  data      FAILED")).unwrap_or("");
    assert!(
        failed.contains(&format!("the disk holding {} ran out of space", disk.join("exec").display())),
        "{}",
        run.stdout
    );
    let record = s.read_json(&disk.join("exec/run.json"));
    assert_eq!(record["status"], "failed");
    assert!(disk.join("exec/n=256/evaluate/metrics.json").exists(), "the cell that fits finished");
    let mut leftovers = Vec::new();
    for entry in walk(&disk) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('.') && name != ".lock" {
            leftovers.push(entry);
        }
    }
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// `--only` runs a slice of the matrix; a second slice into the same run folder adds to the
/// record instead of hiding the first, and a selector the matrix cannot meet is bad input.
#[test]
fn only_runs_a_slice_of_the_matrix_and_slices_add_up_in_the_run_record() {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline(20));
    let first = s.petnas(&["run", "p.yaml", "--only", "sep=0.5"]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert!(summary_line(&first.stdout).starts_with("3 done, 0 reused"), "{}", first.stdout);
    assert!(s.stage_dir("exec", "sep=0.5", "evaluate").join("metrics.json").exists());
    assert!(!s.stage_dir("exec", "sep=2.0", "data").exists(), "a cell outside the slice ran");
    let second = s.petnas(&["run", "p.yaml", "--only", "sep=2.0"]);
    assert_eq!(second.code, 0, "{}{}", second.stdout, second.stderr);
    let record = s.read_json(&s.path().join("runs/exec/run.json"));
    let mut listed: Vec<String> = record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| format!("{}/{}", st["cell"].as_str().unwrap(), st["stage"].as_str().unwrap()))
        .collect();
    listed.sort();
    let mut expected: Vec<String> =
        CELLS.iter().flat_map(|c| STAGES.iter().map(move |st| format!("{c}/{st}"))).collect();
    expected.sort();
    assert_eq!(listed, expected, "both slices in the record");
    assert_eq!(record["only"], serde_json::json!(["sep=2.0"]));

    for (selector, message) in [
        ("sep=3.0", "error: --only `sep=3.0`: no cell has sep=3.0"),
        ("speed=1", "error: --only `speed=1`: `speed` is not an axis of the matrix (its axes: sep)"),
        ("sep", "error: --only `sep`: expected AXIS=VALUE[,AXIS=VALUE…], found `sep`"),
    ] {
        let bad = s.petnas(&["run", "p.yaml", "--only", selector]);
        assert_eq!(bad.code, 2, "{selector}: {}", bad.stderr);
        assert!(bad.stderr.contains(message), "{selector}: {}", bad.stderr);
    }
}

/// 99,900 cells with 10,000 `exclude` entries: validate in well under a second per thousand
/// excludes (it compared every cell with every rule: 80-110 s), and a run that holds memory
/// for its cells, not for all of them many times over (840 MB here, 3.5 GB with more
/// stages, before its first stage), and stops on Ctrl-C while it copies shared stages.
#[test]
fn a_large_matrix_validates_fast_runs_in_bounded_memory_and_stops_on_ctrl_c() {
    let s = Scratch::new();
    let mut text = format!(
        "name: big\ndefaults: {{threads: 1}}\nmatrix:\n  a: [{}]\n  b: [{}]\n  exclude:\n",
        (0..1000).map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
        (0..100).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
    );
    for i in 0..10_000 {
        text.push_str(&format!("    - {{a: {}, b: 0}}\n", i % 100));
    }
    text.push_str("stages:\n  data: {use: demo.data, with: {n: 64}}\n");
    s.write("p.yaml", &text);
    let started = Instant::now();
    let validate = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(
        validate.stdout.trim(),
        "p.yaml: ok (99900 cell(s) × 1 stage(s), 99900 stage runs)",
        "{}",
        validate.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(10), "validate took {:?}", started.elapsed());

    let mut run = s.command(&["run", "p.yaml"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let status = format!("/proc/{}/status", run.id());
    let peak = |status: &str| {
        std::fs::read_to_string(status).ok().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
    };
    std::thread::sleep(Duration::from_secs(6));
    let held_kib = peak(&status).expect("the run is still copying its shared stage");
    assert!(held_kib < 500 * 1024, "the run held {} MiB", held_kib / 1024);
    assert!(std::process::Command::new("kill")
        .args(["-INT", &run.id().to_string()])
        .status()
        .unwrap()
        .success());
    let stopping = Instant::now();
    let code = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status.code();
        }
        assert!(stopping.elapsed() < Duration::from_secs(20), "Ctrl-C did not stop the run");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(130));
}

/// Two variants of one pipeline in one run folder: switching back reuses the stages the
/// first one computed (kept as versions of each stage folder), and at most
/// `KEPT_VERSIONS` (3) versions of a stage stay, the least recently used going first.
#[test]
fn switching_between_variants_of_a_pipeline_reuses_what_each_computed() {
    let s = Scratch::new();
    let run = |steps: u64| {
        s.write("p.yaml", &pipeline(steps));
        let run = s.petnas(&["run", "p.yaml"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        run
    };
    let first = run(200);
    assert!(summary_line(&first.stdout).starts_with("6 done, 0 reused"), "{}", first.stdout);
    let metrics =
        |cell: &str| std::fs::read(s.stage_dir("exec", cell, "evaluate").join("metrics.json")).unwrap();
    let first_metrics = metrics("sep=2.0");
    let other = run(100);
    assert!(summary_line(&other.stdout).starts_with("4 done, 2 reused"), "{}", other.stdout);
    let back = run(200);
    assert!(summary_line(&back.stdout).starts_with("0 done, 6 reused"), "{}", back.stdout);
    assert!(back.stderr.contains("reused a version the stage's folder held before"), "{}", back.stderr);
    assert_eq!(metrics("sep=2.0"), first_metrics);
    // The variant it switched away from is kept too.
    let again = run(100);
    assert!(summary_line(&again.stdout).starts_with("0 done, 6 reused"), "{}", again.stdout);

    for steps in [110, 120, 130] {
        run(steps);
    }
    let versions = s.path().join("runs/exec/sep=2.0/.versions/fit");
    let kept: Vec<_> = std::fs::read_dir(&versions).unwrap().flatten().collect();
    assert_eq!(kept.len(), 3, "{}", versions.display());
    // 200, used longest ago, is gone: it computes again.
    let oldest = run(200);
    assert!(summary_line(&oldest.stdout).starts_with("4 done, 2 reused"), "{}", oldest.stdout);
}

/// On a terminal the live display shows the run, and INFO lines do not scroll over it: they
/// stay in each stage's log.jsonl, and `RUST_LOG=info` brings them back to the terminal.
#[test]
fn on_a_terminal_info_lines_stay_in_the_logs_under_the_live_display() {
    let s = Scratch::new();
    s.write("p.yaml", &pipeline(200));
    let on_a_terminal = |rust_log: Option<&str>| {
        let line = format!("{} run p.yaml --force data", petnas_e2e::petnas_bin().display());
        let mut command = std::process::Command::new("script");
        command
            .args(["-qefc", &line, "/dev/null"])
            .current_dir(s.path())
            .env_remove("CI")
            .env_remove("RUST_LOG")
            .env("PETNAS_PLUGIN_PATH", petnas_e2e::demo_plugin_dir());
        if let Some(level) = rust_log {
            command.env("RUST_LOG", level);
        }
        let out = command.output().expect("script (util-linux) runs petnas on a pseudo-terminal");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let shown = on_a_terminal(None);
    assert!(shown.contains("/6 stages"), "the live display: {shown}");
    assert!(!shown.contains("INFO"), "no INFO line under the live display: {shown}");
    let log = std::fs::read_to_string(s.stage_dir("exec", "sep=0.5", "fit").join("log.jsonl")).unwrap();
    assert!(log.contains("\"INFO\""), "the stage's log keeps them: {log}");
    let asked = on_a_terminal(Some("info"));
    assert!(asked.contains("INFO"), "RUST_LOG=info shows them: {asked}");
}
