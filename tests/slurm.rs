//! `petnas run --executor slurm` against a real Slurm: the one-node cluster that
//! `scripts/slurm-local.sh` starts (CI runs it and sets PETNAS_TEST_SLURM=1, which makes these
//! tests required; elsewhere they run where `sbatch` is on PATH and say so where it is not).
use std::process::Command;
use std::time::{Duration, Instant};

use petnas_e2e::{glue_fixtures, tiny_model, Scratch};

fn slurm_here() -> bool {
    let required = std::env::var_os("PETNAS_TEST_SLURM").is_some_and(|v| v == "1");
    let up = Command::new("sinfo").arg("-h").output().is_ok_and(|o| o.status.success());
    assert!(up || !required, "PETNAS_TEST_SLURM=1 but Slurm is not up (scripts/slurm-local.sh starts it)");
    if !up {
        eprintln!(
            "no Slurm here (scripts/slurm-local.sh starts one): the Slurm executor's tests did not run"
        );
    }
    up
}

/// Jobs of ours still known to squeue.
fn queued(name_part: &str) -> Vec<String> {
    let out = Command::new("squeue").args(["-h", "-o", "%i %j"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(name_part))
        .map(str::to_string)
        .collect()
}

const PIPELINE: &str = "name: onslurm
defaults: {threads: 1, resources: {time: 10m, cpus: 1}}
matrix:
  n: [256, 2]
stages:
  data: {use: demo.data, with: {n: '${matrix.n}'}}
  fit: {use: demo.fit, needs: [data], with: {steps: 50}, resources: {cpus: 2, mem: 64M}}
  evaluate: {use: demo.evaluate, needs: [data, fit]}
";

#[test]
fn stages_run_as_slurm_jobs_with_their_logs_and_a_second_run_reuses_them() {
    if !slurm_here() {
        return;
    }
    let s = Scratch::new();
    s.write("p.yaml", PIPELINE);
    let run = s.petnas(&["run", "p.yaml", "--executor", "slurm", "--max-jobs", "2"]);
    assert_eq!(run.code, 1, "the cell with n=2 fails:\n{}{}", run.stdout, run.stderr);
    for stage in ["data", "fit", "evaluate"] {
        let dir = s.stage_dir("onslurm", "n=256", stage);
        assert!(dir.join("stage.json").exists(), "{stage} committed by its job");
        let logs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("slurm-"))
            .collect();
        assert_eq!(logs.len(), 1, "{stage}: the job's log is kept in the stage's folder");
    }
    // What the fit's job asked for: its own resources over the defaults'.
    let fit_log = std::fs::read_dir(s.stage_dir("onslurm", "n=256", "fit"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .find(|n| n.starts_with("slurm-"))
        .unwrap();
    let job = fit_log.trim_start_matches("slurm-").trim_end_matches(".log");
    let shown = Command::new("scontrol").args(["-o", "show", "job", job]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    for asked in ["NumCPUs=2", "TimeLimit=00:10:00", "MinMemoryNode=64M"] {
        assert!(shown.contains(asked), "job {job} asked for {asked}: {shown}");
    }
    let metrics = s.read_json(&s.stage_dir("onslurm", "n=256", "evaluate").join("metrics.json"));
    assert!(metrics["accuracy"].as_f64().is_some(), "{metrics}");
    let failed = run.stdout.lines().find(|l| l.starts_with("n=2    data      FAILED")).unwrap_or("");
    assert!(
        failed.contains("ended FAILED (exit code 1:0)") && failed.contains("`n` must be at least 4, got 2"),
        "the failed job's Slurm state and the tail of its log:\n{}",
        run.stdout
    );
    assert!(failed.contains(".slurm-data/slurm-"), "where its log is: {failed}");
    assert_eq!(s.read_json(&s.path().join("runs/onslurm/run.json"))["status"], "failed");

    let again = s.petnas(&["run", "p.yaml", "--executor", "slurm"]);
    assert!(again.stdout.contains("0 done, 3 reused, 1 failed"), "{}", again.stdout);
    assert_eq!(again.stderr.matches("submitted to Slurm").count(), 1, "only the failed stage is resubmitted");
}

const TWO_CELLS: &str = "name: same
defaults: {threads: 1}
matrix:
  n: [256, 128]
stages:
  data: {use: demo.data, with: {n: '${matrix.n}'}}
  fit: {use: demo.fit, needs: [data], with: {steps: 300}}
  evaluate: {use: demo.evaluate, needs: [data, fit]}
";

fn assert_same_outputs(a: &Scratch, b: &Scratch, pipeline: &str, cells: &[&str]) {
    for cell in cells {
        for stage in ["data", "fit", "evaluate"] {
            let (got, want) = (
                petnas_e2e::stage_outputs(&a.stage_dir(pipeline, cell, stage)),
                petnas_e2e::stage_outputs(&b.stage_dir(pipeline, cell, stage)),
            );
            assert!(
                !want.is_empty() && got == want,
                "{cell}/{stage}: the Slurm run's outputs differ from the local run's"
            );
        }
    }
}

#[test]
fn outputs_through_slurm_are_byte_identical_to_a_local_run() {
    if !slurm_here() {
        return;
    }
    let (on_slurm, local) = (Scratch::new(), Scratch::new());
    for s in [&on_slurm, &local] {
        s.write("p.yaml", TWO_CELLS);
    }
    let run = on_slurm.petnas(&["run", "p.yaml", "--executor", "slurm"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr.matches("submitted to Slurm").count(), 6, "one job per stage: {}", run.stderr);
    assert_eq!(local.petnas(&["run", "p.yaml"]).code, 0);
    assert_same_outputs(&on_slurm, &local, "same", &["n=256", "n=128"]);
}

/// `scancel` of a running job fails its stage (and skips what needs it); the next run
/// redoes that stage alone, reusing what completed.
#[test]
fn a_job_cancelled_mid_stage_is_the_only_stage_redone() {
    if !slurm_here() {
        return;
    }
    let pipeline = "name: cancelled
defaults: {threads: 1}
stages:
  data: {use: demo.data, with: {n: 256}}
  fit: {use: demo.fit, needs: [data], with: {steps: 120000}}
  evaluate: {use: demo.evaluate, needs: [data, fit]}
";
    let s = Scratch::new();
    s.write("p.yaml", pipeline);
    let job_dir = s.path().join("runs/cancelled/default/.slurm-fit");
    let first = s
        .command(&["run", "p.yaml", "--executor", "slurm"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Mid-stage: the job has written progress.
    while !job_dir.join("progress.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "the fit's job never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let job = s.read_json(&job_dir.join("job.json"))["job_id"].as_u64().unwrap();
    assert!(Command::new("scancel").arg(job.to_string()).status().unwrap().success());
    let out = first.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("default  fit       FAILED") && l.contains("ended CANCELLED")),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l.starts_with("default  evaluate  skipped")), "{stdout}");

    let again = s.petnas(&["run", "p.yaml", "--executor", "slurm"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("2 done, 1 reused, 0 failed"), "{}", again.stdout);
    assert_eq!(
        again.stderr.matches("submitted to Slurm").count(),
        2,
        "fit and evaluate only: {}",
        again.stderr
    );
    let local = Scratch::new();
    local.write("p.yaml", pipeline);
    assert_eq!(local.petnas(&["run", "p.yaml"]).code, 0);
    assert_same_outputs(&s, &local, "cancelled", &["default"]);
}

/// A fit's job cancelled after it wrote a checkpoint: its next job resumes from the
/// checkpoint, and the fit ends as an uninterrupted local one.
#[test]
fn a_cancelled_fit_resumes_from_its_checkpoint_in_its_next_job() {
    if !slurm_here() {
        return;
    }
    let pipeline = format!(
        "name: resumed
defaults: {{seed: 5, threads: 1}}
stages:
  model: {{use: plm.load, with: {{model: '{model}'}}}}
  data: {{use: glue.load, needs: [model], with: {{task: rte, dir: '{glue}', max_len: 48}}}}
  pets: {{use: pet.attach, needs: [model], with: {{pets: [{{type: lora, rank: 4}}]}}}}
  fit: {{use: train.fit, needs: [pets, data], with: {{epochs: 30, batch_size: 16, lr: 0.01, eval_every: 16, checkpoint_every: 4}}}}
",
        model = tiny_model(),
        glue = glue_fixtures()
    );
    let s = Scratch::new();
    s.write("p.yaml", &pipeline);
    let checkpoints = s.path().join("runs/resumed/default/.checkpoints");
    let has_checkpoint = || {
        std::fs::read_dir(&checkpoints)
            .map(|d| d.flatten().any(|e| e.path().join("checkpoint.json").exists()))
            .unwrap_or(false)
    };
    let first = s
        .command(&["run", "p.yaml", "--executor", "slurm"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !has_checkpoint() {
        assert!(started.elapsed() < Duration::from_secs(180), "the fit's job wrote no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    let job_dir = s.path().join("runs/resumed/default/.slurm-fit");
    let job = s.read_json(&job_dir.join("job.json"))["job_id"].as_u64().unwrap();
    assert!(Command::new("scancel").arg(job.to_string()).status().unwrap().success());
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!s.stage_dir("resumed", "default", "fit").exists(), "cancelled while fitting");

    let again = s.petnas(&["run", "p.yaml", "--executor", "slurm"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    let fit = s.stage_dir("resumed", "default", "fit");
    let log = std::fs::read_dir(&fit)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("slurm-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("the fit's job log in its folder");
    assert!(log.contains("resuming from a checkpoint"), "the second job resumed: {log}");

    let local = Scratch::new();
    local.write("p.yaml", &pipeline);
    assert_eq!(local.petnas(&["run", "p.yaml"]).code, 0);
    let weights = |s: &Scratch| {
        std::fs::read(s.stage_dir("resumed", "default", "fit").join("outputs.safetensors")).unwrap()
    };
    assert!(weights(&s) == weights(&local), "the resumed fit differs from an uninterrupted local one");
}

#[test]
fn a_killed_petnas_adopts_its_running_job_and_ctrl_c_cancels_it() {
    if !slurm_here() {
        return;
    }
    let s = Scratch::new();
    s.write(
        "long.yaml",
        "name: adopt
defaults: {threads: 1}
stages:
  data: {use: demo.data, with: {n: 256}}
  fit: {use: demo.fit, needs: [data], with: {steps: 100000000}}
",
    );
    let job_dir = s.path().join("runs/adopt/default/.slurm-fit");
    let mut first = s.command(&["run", "long.yaml", "--executor", "slurm"]).spawn().unwrap();
    let started = Instant::now();
    while !job_dir.join("job.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the fit was never submitted");
        std::thread::sleep(Duration::from_millis(200));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let job = s.read_json(&job_dir.join("job.json"))["job_id"].as_u64().unwrap();
    assert!(!queued(&format!("{job} ")).is_empty(), "the job outlives the petnas that submitted it");

    let second = s
        .command(&["run", "long.yaml", "--executor", "slurm"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let interrupt = Command::new("kill").args(["-INT", &second.id().to_string()]).status().unwrap();
    assert!(interrupt.success());
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!("adopted the Slurm job an earlier run submitted job={job}")),
        "{stderr}"
    );
    assert!(!stderr.contains("submitted to Slurm"), "no second job for the same stage: {stderr}");
    let started = Instant::now();
    while !queued(&format!("{job} ")).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "Ctrl-C did not cancel job {job}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The foreground petnas shows a job's own progress: the job writes it into its folder,
/// and the plain progress lines (the live display's counts) come from there.
#[test]
fn a_jobs_progress_shows_in_the_foreground() {
    if !slurm_here() {
        return;
    }
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: followed
defaults: {threads: 1}
stages:
  data: {use: demo.data, with: {n: 256}}
  fit: {use: demo.fit, needs: [data], with: {steps: 300000}}
",
    );
    let run = s.petnas(&["run", "p.yaml", "--executor", "slurm"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("default/fit: ") && l.contains("/300000 steps ("))
        .unwrap_or_else(|| panic!("no progress line of the job's fit:\n{}", run.stderr));
    let done: u64 =
        line.split("default/fit: ").nth(1).and_then(|r| r.split('/').next()).unwrap().parse().unwrap();
    assert!(done > 0 && done < 300000, "{line}");
    assert!(
        !s.path().join("runs/followed/default/.slurm-fit").exists(),
        "the job's folder is gone once it ended"
    );
}

#[test]
fn resources_are_checked_by_validate() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: res
defaults: {resources: {gpus: -1, memory: 4G}, executor: {type: cloud, max_jobs: 0}}
stages:
  data: {use: demo.data, resources: {time: soon, mem: 16GB, cpus: 0}}
",
    );
    let run = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    for message in [
        "p.yaml:2:30: error: `gpus` must be an integer from 0 to 64, found integer `-1`",
        "p.yaml:2:34: error: unknown key in `resources` `memory`",
        "p.yaml:4:44: error: `time` must be a time limit (`2h`, `90m`, `1-12:00:00`), found string `soon`",
        "p.yaml:4:55: error: `mem` must be a size as sbatch takes it (`16G`, `512M`), found string `16GB`",
        "p.yaml:4:67: error: `cpus` must be an integer from 1 to 1024, found integer `0`",
        "p.yaml:2:64: error: `type` must be local or slurm, found string `cloud`",
        "p.yaml:2:81: error: `max_jobs` must be an integer from 1 to 100000, found integer `0`",
    ] {
        assert!(run.stderr.contains(message), "{message}:\n{}", run.stderr);
    }
}

/// `defaults: {executor: {type: slurm, …}}` sends the stages to Slurm without the flag, and
/// the command line's `--executor local` wins over it.
#[test]
fn the_pipeline_can_choose_the_executor_and_the_command_line_overrides_it() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: chosen
defaults: {threads: 1, executor: {type: slurm, max_jobs: 2, sbatch_args: [--comment=petnas-test]}}
stages:
  data: {use: demo.data, with: {n: 64}}
",
    );
    let local = s.petnas(&["run", "p.yaml", "--executor", "local", "--runs-dir", "local"]);
    assert_eq!(local.code, 0, "{}", local.stderr);
    assert!(!local.stderr.contains("submitted to Slurm"), "{}", local.stderr);
    if !slurm_here() {
        return;
    }
    let run = s.petnas(&["run", "p.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("submitted to Slurm"), "{}", run.stderr);
}

/// A profile file holds the cluster's `executor:` settings: over the pipeline's, under the
/// command line's, checked as strictly.
#[test]
fn a_profile_file_chooses_the_executor_between_pipeline_and_command_line() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: profiled
defaults: {threads: 1, executor: {type: local}}
stages:
  data: {use: demo.data, with: {n: 64}}
",
    );
    s.write("bad.yaml", "executor: {type: slurm, max_jobs: zero}\ncluster: x\n");
    let bad = s.petnas(&["run", "p.yaml", "--profile", "bad.yaml"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("bad.yaml:1:35: error: `max_jobs` must be an integer from 1 to 100000"),
        "{}",
        bad.stderr
    );
    assert!(bad.stderr.contains("bad.yaml:2:1: error: unknown key in a profile `cluster`"), "{}", bad.stderr);
    assert!(!s.path().join("runs/profiled").exists(), "nothing ran");
    s.write(
        "cluster.yaml",
        "executor: {type: slurm, max_jobs: 2, sbatch_args: [--comment=petnas-profile]}\n",
    );
    let local = s.petnas(&[
        "run",
        "p.yaml",
        "--profile",
        "cluster.yaml",
        "--executor",
        "local",
        "--runs-dir",
        "local",
    ]);
    assert_eq!(local.code, 0, "{}", local.stderr);
    assert!(!local.stderr.contains("submitted to Slurm"), "the command line wins: {}", local.stderr);
    if !slurm_here() {
        return;
    }
    let run = s.command(&["run", "p.yaml"]).env("PETNAS_PROFILE", "cluster.yaml").output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("submitted to Slurm"), "the profile wins over the pipeline: {stderr}");
}

/// A pipeline file may come from someone else: it may not make jobs load code, take
/// environment or write outside the run folder (`--export=…,LD_PRELOAD=…`, `--output=…`).
/// The same flags stay open to the person who runs petnas, in a profile or on the command line.
#[test]
fn a_pipeline_cannot_pass_sbatch_flags_that_load_code_or_write_outside_the_run() {
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: hostile
defaults:
  threads: 1
  executor:
    type: slurm
    sbatch_args: ['--export=ALL,LD_PRELOAD=/tmp/evil.so', --output=/tmp/elsewhere.log, -D/tmp, --constraint=a100]
stages:
  data: {use: demo.data, with: {n: 64}}
",
    );
    for command in ["validate", "run"] {
        let run = s.petnas(&[command, "p.yaml"]);
        assert_eq!(run.code, 2, "{command}: {}", run.stderr);
        for message in [
            "p.yaml:6:19: error: a pipeline file may not pass sbatch `--export`: it sets the job's environment",
            "p.yaml:6:59: error: a pipeline file may not pass sbatch `--output`: it names a file or folder outside the run folder",
            "p.yaml:6:88: error: `-D/tmp` is not a long sbatch flag",
            "pass any other flag with `petnas run --sbatch-arg=…` or in a `--profile` file",
        ] {
            assert!(run.stderr.contains(message), "{command}: {message}:\n{}", run.stderr);
        }
        assert!(!run.stderr.contains("--constraint`"), "a resource flag is allowed: {}", run.stderr);
    }
    assert!(!s.path().join("runs/hostile").exists(), "nothing ran");
    s.write("trusted.yaml", "executor: {sbatch_args: [--export=ALL, --output=/tmp/x.log]}\n");
    s.write(
        "p.yaml",
        "name: trusted\ndefaults: {threads: 1}\nstages:\n  data: {use: demo.data, with: {n: 64}}\n",
    );
    let profiled = s.petnas(&["validate", "p.yaml"]);
    assert_eq!(profiled.code, 0, "{}", profiled.stderr);
    let local = s.petnas(&["run", "p.yaml", "--profile", "trusted.yaml", "--executor", "local"]);
    assert_eq!(local.code, 0, "a profile may pass any flag: {}", local.stderr);
}

/// sbatch reads `--output` as a pattern: a `%` in the run folder's path must reach it as `%%`,
/// or every job fails before it starts, with no log.
#[test]
fn a_percent_sign_in_the_runs_folder_reaches_sbatch_escaped() {
    if !slurm_here() {
        return;
    }
    let s = Scratch::new();
    s.write(
        "p.yaml",
        "name: percent\ndefaults: {threads: 1}\nstages:\n  data: {use: demo.data, with: {n: 64}}\n",
    );
    let run = s.petnas(&["run", "p.yaml", "--executor", "slurm", "--runs-dir", "runs%j%x"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let stage = s.path().join("runs%j%x/percent/default/data");
    assert!(stage.join("stage.json").exists(), "the job committed its stage");
    let logs: Vec<String> = std::fs::read_dir(&stage)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("slurm-") && n.ends_with(".log"))
        .collect();
    assert_eq!(logs.len(), 1, "the job's log, beside the stage: {logs:?}");
}

/// A petnas that loses `squeue` after submitting does not leave its job running unwatched:
/// it cancels the job and says so.
#[test]
fn a_job_whose_state_cannot_be_read_is_cancelled_not_left_running() {
    if !slurm_here() {
        return;
    }
    let s = Scratch::new();
    let bin = s.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["sbatch", "scancel", "scontrol", "sacct", "sinfo"] {
        let real = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
        let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
        if !real.is_empty() {
            std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
        }
    }
    s.write("p.yaml", "name: unwatched\ndefaults: {threads: 1}\nstages:\n  unwatched_data: {use: demo.data, with: {n: 64}}\n");
    let path = bin.display().to_string();
    let run = s.command(&["run", "p.yaml", "--executor", "slurm"]).env("PATH", &path).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("lost track of Slurm job") && stdout.contains("so it was cancelled"),
        "{stdout}{stderr}"
    );
    let start = Instant::now();
    while !queued("unwatched_data").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the job is still queued: {:?}",
            queued("unwatched_data")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
