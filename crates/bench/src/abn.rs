//! `bench --abn`: the A/B/n service of our controller against the original Iter8 v1.1.2's, on
//! the same routemap, driven by the same client (`abn-client bench`, built on the original's
//! generated Go package). Each server runs pinned to CPU 0 and the client to CPU 1, so the
//! two do not fight for a core; rounds alternate between the servers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use testenv::fixtures::{self, config_map};
use testenv::process::free_port;
use testenv::ControlPlane;

use crate::Kind;

/// What one load run measured (the fields `abn-client bench` prints).
#[derive(Clone, Debug, Default)]
pub struct Load {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// Settings of the A/B/n benchmark.
pub struct AbnSettings {
    pub ours: PathBuf,
    pub original: PathBuf,
    pub client: PathBuf,
    pub rounds: usize,
    pub duration: Duration,
    pub concurrency: usize,
    pub users: usize,
}

/// Medians over the rounds, per server and method.
pub struct AbnReport {
    pub lookup: Vec<(Kind, Vec<Load>)>,
    pub write: Vec<(Kind, Vec<Load>)>,
}

const CONFIG: &str = r#"defaultResync: 1h
resourceTypes:
  cm: {Group: "", Version: v1, Resource: configmaps}
"#;

struct Server {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A routemap of two ConfigMap versions weighted 50/50 (ConfigMaps have no conditions: they
/// are available once they exist).
async fn application(cp: &ControlPlane, ns: &str) -> Result<()> {
    let client = cp.client().await?;
    for v in ["backend-0", "backend-1"] {
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": v, "namespace": ns, "labels": {"iter8.tools/watch": "true"}},
            "data": {"model": v}
        });
        testenv::objects::apply(&client, &config_map(), Some(ns), &cm, "bench").await?;
    }
    let spec = format!(
        "versions:\n- resources: [{{gvrShort: cm, name: backend-0, namespace: {ns}}}]\n  weight: 50\n- resources: [{{gvrShort: cm, name: backend-1, namespace: {ns}}}]\n  weight: 50\n"
    );
    let mut rm = fixtures::routemap_object("backend-routemap", json!({"strSpec": spec}));
    rm["metadata"]["namespace"] = json!(ns);
    testenv::objects::apply(&client, &config_map(), Some(ns), &rm, "bench").await?;
    Ok(())
}

fn start(
    kind: Kind,
    settings: &AbnSettings,
    cp: &ControlPlane,
    ns: &str,
    dir: &Path,
) -> Result<Server> {
    let dir = dir.join(kind.label());
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(&config, CONFIG)?;
    let port = free_port()?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"]);
    match kind {
        Kind::Floor => bail!("the floor has no A/B/n service"),
        Kind::Ours => {
            cmd.arg(&settings.ours).args([
                "controller",
                "--admin-address",
                "127.0.0.1:0",
                "--abn-address",
                &format!("127.0.0.1:{port}"),
                "--metrics-dir",
            ]);
            cmd.arg(dir.join("metrics")).env("LOG_LEVEL", "warn");
        }
        Kind::Original => {
            let abn = dir.join("abn.yaml");
            std::fs::write(&abn, format!("port: {port}\n"))?;
            let metrics = dir.join("metrics.yaml");
            let badger = dir.join("metrics");
            // The original refuses a store folder that does not exist ("volume not mounted").
            std::fs::create_dir_all(&badger)?;
            std::fs::write(
                &metrics,
                format!(
                    "port: {}\nimplementation: badgerdb\nbadgerdb:\n  dir: {}\n",
                    free_port()?,
                    badger.display()
                ),
            )?;
            cmd.arg(&settings.original)
                .args(["controllers", "-l", "warning"])
                .env("ABN_CONFIG_FILE", &abn)
                .env("METRICS_CONFIG_FILE", &metrics)
                .env("METRICS_DIR", &badger);
        }
    }
    let log = std::fs::File::create(dir.join("controller.log"))?;
    let child = cmd
        .env("POD_NAME", "iter8-0")
        .env("POD_NAMESPACE", ns)
        .env("CONFIG_FILE", &config)
        .env("KUBECONFIG", cp.kubeconfig_path())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting a controller")?;
    Ok(Server {
        child,
        address: format!("127.0.0.1:{port}"),
        log: dir.join("controller.log"),
    })
}

fn client(settings: &AbnSettings, address: &str, args: &[&str]) -> Result<Value> {
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(&settings.client)
        .args(["-address", address])
        .args(args)
        .output()
        .context("running abn-client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "abn-client {args:?} printed {text:?}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Waits until the server answers a Lookup for the application.
async fn wait_answering(settings: &AbnSettings, server: &mut Server, app: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("the controller exited early with {status}");
        }
        let out = client(
            settings,
            &server.address,
            &["-timeout", "1s", "lookup", app, "u"],
        );
        if out.as_ref().is_ok_and(|v| v.get("code").is_none()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!(
                "no Lookup answer from {} within 60s ({:?}); its log ends:\n{}",
                server.address,
                out,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn load(settings: &AbnSettings, address: &str, method: &str, app: &str) -> Result<Load> {
    let duration = format!("{}s", settings.duration.as_secs());
    let concurrency = settings.concurrency.to_string();
    let users = settings.users.to_string();
    let v = client(
        settings,
        address,
        &[
            "bench",
            method,
            "-app",
            app,
            "-concurrency",
            &concurrency,
            "-duration",
            &duration,
            "-users",
            &users,
        ],
    )?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(Load {
        rps: f("rps"),
        p50_ms: f("p50_ms"),
        p99_ms: f("p99_ms"),
        errors: v["errors"].as_u64().unwrap_or(0),
    })
}

/// Runs the rounds: each server in turn serves a Lookup load, then a WriteMetric load.
pub async fn run(cp: &ControlPlane, settings: &AbnSettings) -> Result<AbnReport> {
    let mut report = AbnReport {
        lookup: vec![(Kind::Ours, vec![]), (Kind::Original, vec![])],
        write: vec![(Kind::Ours, vec![]), (Kind::Original, vec![])],
    };
    for round in 0..settings.rounds {
        // Alternate who goes first: the machine warms up and cools down.
        let order = if round % 2 == 0 {
            [Kind::Ours, Kind::Original]
        } else {
            [Kind::Original, Kind::Ours]
        };
        for kind in order {
            let ns = cp.namespace(&format!("abn-{}", kind.label())).await?;
            application(cp, &ns).await?;
            let app = format!("{ns}/backend");
            let dir = cp.dir().join(format!("abn-bench-{ns}"));
            let mut server = start(kind, settings, cp, &ns, &dir)?;
            wait_answering(settings, &mut server, &app).await?;
            let i = usize::from(kind == Kind::Original);
            let l = load(settings, &server.address, "lookup", &app)?;
            eprintln!("round {round} {}: lookup {l:?}", kind.label());
            report.lookup[i].1.push(l);
            let w = load(settings, &server.address, "write", &app)?;
            eprintln!("round {round} {}: write {w:?}", kind.label());
            report.write[i].1.push(w);
        }
    }
    Ok(report)
}

fn median(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (xs[n / 2], xs[0], xs[n - 1])
}

/// The Markdown table: medians with the spread (min–max) and ours ÷ original.
pub fn markdown(report: &AbnReport) -> String {
    let mut out = String::from(
        "| method | figure | ours (median, min–max) | original (median, min–max) | ours ÷ original |\n|---|---|---|---|---|\n",
    );
    for (method, rows) in [("Lookup", &report.lookup), ("WriteMetric", &report.write)] {
        type Pick = fn(&Load) -> f64;
        let figures: [(&str, Pick); 3] = [
            ("requests/s", |l| l.rps),
            ("p50 ms", |l| l.p50_ms),
            ("p99 ms", |l| l.p99_ms),
        ];
        for (name, pick) in figures {
            let ours = median(rows[0].1.iter().map(pick).collect());
            let orig = median(rows[1].1.iter().map(pick).collect());
            out.push_str(&format!(
                "| {method} | {name} | {:.2} ({:.2}–{:.2}) | {:.2} ({:.2}–{:.2}) | {:.2} |\n",
                ours.0,
                ours.1,
                ours.2,
                orig.0,
                orig.1,
                orig.2,
                ours.0 / orig.0
            ));
        }
        let errors: u64 = rows[0].1.iter().map(|l| l.errors).sum();
        let orig_errors: u64 = rows[1].1.iter().map(|l| l.errors).sum();
        out.push_str(&format!(
            "| {method} | errors (all rounds) | {errors} | {orig_errors} | |\n"
        ));
    }
    out
}
