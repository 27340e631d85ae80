//! Errors reach users through runc's `--log` file: on failure the runc shim puts the last
//! error line of `<bundle>/log.json` into the error CRI returns, which `kubectl describe`
//! shows. So every failure is written there as one JSON line in runc's own format.
use std::io::Write;

pub struct ErrorLog {
    path: Option<String>,
}

impl ErrorLog {
    pub fn new(path: Option<&str>) -> ErrorLog {
        ErrorLog { path: path.map(String::from) }
    }

    fn write(&self, level: &str, msg: &str) {
        let time =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let line = serde_json::json!({"level": level, "msg": msg, "time": time});
        if let Some(path) = &self.path {
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "{line}");
            }
        }
    }

    pub fn error(&self, msg: &str) {
        self.write("error", msg);
        eprintln!("{msg}");
        tracing::error!("{msg}");
    }

    pub fn warn(&self, msg: &str) {
        self.write("warning", msg);
        tracing::warn!("{msg}");
    }
}
