//! The metrics store's settings: the `metrics.yaml` file the controller chart renders
//! (`METRICS_CONFIG_FILE`), with Iter8 v1.1's keys (`implementation: badgerdb|redis`,
//! `badgerdb.dir`, `redis.{address,username,password,db}`) and ours (`ttl`, `maxUsers`,
//! `maxValues`). `badgerdb` selects the embedded store: same role, one file, no server.

use std::path::PathBuf;

use serde::Deserialize;

use crate::store::{Backend, StoreConfig};

/// Name of the embedded store's file inside its directory.
pub const EMBEDDED_FILE: &str = "abn.redb";

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct File {
    implementation: Option<String>,
    badgerdb: Option<Dir>,
    embedded: Option<Dir>,
    redis: Option<Redis>,
    ttl: Option<String>,
    max_users: Option<u64>,
    max_values: Option<usize>,
}

#[derive(Deserialize, Default)]
struct Dir {
    dir: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
struct Redis {
    address: Option<String>,
    username: Option<String>,
    password: Option<String>,
    db: Option<i64>,
}

/// Reads `metrics.yaml`; `default_dir` holds the embedded store when the file names none.
pub fn from_yaml(text: &str, default_dir: &std::path::Path) -> Result<StoreConfig, String> {
    let f: File = if text.trim().is_empty() {
        File::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| format!("metrics config: {e}"))?
    };
    let mut config = StoreConfig::default();
    let implementation = f.implementation.as_deref().unwrap_or("embedded");
    config.backend = match implementation {
        "embedded" | "badgerdb" => {
            let dir = f
                .embedded
                .and_then(|d| d.dir)
                .or(f.badgerdb.and_then(|d| d.dir))
                .unwrap_or_else(|| default_dir.to_path_buf());
            Backend::Embedded {
                path: dir.join(EMBEDDED_FILE),
            }
        }
        "redis" => {
            let r = f.redis.unwrap_or_default();
            Backend::Redis {
                address: r.address.unwrap_or_else(|| "redis:6379".to_string()),
                username: r.username.filter(|s| !s.is_empty()),
                password: r.password.filter(|s| !s.is_empty()),
                db: r.db.unwrap_or(0),
            }
        }
        other => {
            return Err(format!(
                "metrics config: implementation {other:?} is not known (use embedded, badgerdb or redis)"
            ))
        }
    };
    if let Some(ttl) = f.ttl {
        config.ttl = iter8_core::config::parse_go_duration(&ttl)
            .map_err(|e| format!("metrics config: ttl {ttl:?}: {e}"))?;
        if config.ttl.is_zero() {
            return Err("metrics config: ttl must be greater than zero".to_string());
        }
    }
    if let Some(n) = f.max_users {
        if n == 0 {
            return Err("metrics config: maxUsers must be at least 1".to_string());
        }
        config.max_users = n;
    }
    if let Some(n) = f.max_values {
        config.max_values = n;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn v1_1_files_keep_working() {
        let c = from_yaml(
            "port: 8080\nimplementation: badgerdb\nbadgerdb:\n  storage: 50Mi\n  storageClassName: standard\n  dir: /metrics\n",
            Path::new("/x"),
        )
        .expect("valid");
        assert_eq!(
            c.backend,
            Backend::Embedded {
                path: PathBuf::from("/metrics/abn.redb")
            }
        );
        let c = from_yaml(
            "implementation: redis\nredis:\n  address: redis:6379\n  password: s\n",
            Path::new("/x"),
        )
        .expect("valid");
        assert!(
            matches!(c.backend, Backend::Redis { ref address, ref password, db: 0, .. } if address == "redis:6379" && password.as_deref() == Some("s"))
        );
        assert_eq!(c.ttl, Duration::from_secs(86400));
    }

    #[test]
    fn mistakes_name_the_field() {
        let e = from_yaml("implementation: mongodb", Path::new("/x")).expect_err("unknown");
        assert!(e.contains("implementation \"mongodb\""), "{e}");
        let e = from_yaml("ttl: soon", Path::new("/x")).expect_err("bad ttl");
        assert!(e.contains("ttl"), "{e}");
        let c = from_yaml("", Path::new("/data")).expect("empty is the default");
        assert_eq!(
            c.backend,
            Backend::Embedded {
                path: PathBuf::from("/data/abn.redb")
            }
        );
    }
}
