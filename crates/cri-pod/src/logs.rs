//! CRI container log files: `<RFC3339Nano time> <stdout|stderr> <P|F> <content>` per line,
//! where `P` marks a partial line the runtime split (its content continues in the next record).
//! Parsing is pure; `LogFollower` reads a file incrementally (containerd may create it late).
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One whole output line of a container (partials joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: Stream,
    pub text: String,
}

/// Incremental parser: feed bytes as they arrive, get whole lines back.
#[derive(Debug, Default)]
pub struct LogParser {
    pending_bytes: Vec<u8>,
    partial: [String; 2],
}

impl LogParser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<LogLine> {
        self.pending_bytes.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.pending_bytes.iter().position(|&b| b == b'\n') {
            let record: Vec<u8> = self.pending_bytes.drain(..=nl).collect();
            let record = String::from_utf8_lossy(&record[..record.len() - 1]).into_owned();
            if let Some(line) = self.record(&record) {
                out.push(line);
            }
        }
        out
    }

    fn record(&mut self, record: &str) -> Option<LogLine> {
        let mut fields = record.splitn(4, ' ');
        let (_time, stream, tag) = (fields.next()?, fields.next()?, fields.next()?);
        let content = fields.next().unwrap_or("");
        let stream = match stream {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            _ => return None,
        };
        let slot = &mut self.partial[stream as usize];
        slot.push_str(content);
        if tag == "P" {
            return None;
        }
        Some(LogLine { stream, text: std::mem::take(slot) })
    }
}

/// Parses a whole log file's content.
pub fn parse_all(bytes: &[u8]) -> Vec<LogLine> {
    LogParser::default().feed(bytes)
}

/// Reads new records from a container log file since the last call.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    parser: LogParser,
}

impl LogFollower {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LogFollower { path: path.into(), offset: 0, parser: LogParser::default() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// New whole lines; nothing (not an error) while the file does not exist yet.
    pub fn poll(&mut self) -> std::io::Result<Vec<LogLine>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        Ok(self.parser.feed(&buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_partials_per_stream_and_keeps_spaces() {
        let text = b"2024-01-01T00:00:00.1Z stdout P hel\n2024-01-01T00:00:00.2Z stderr F oops  two\n2024-01-01T00:00:00.3Z stdout F lo world\n2024-01-01T00:00:00.4Z stdout F \n";
        let lines = parse_all(text);
        assert_eq!(
            lines,
            [
                LogLine { stream: Stream::Stderr, text: "oops  two".into() },
                LogLine { stream: Stream::Stdout, text: "hello world".into() },
                LogLine { stream: Stream::Stdout, text: "".into() },
            ]
        );
    }

    #[test]
    fn follower_reads_incrementally_and_waits_for_whole_records() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut f = LogFollower::new(&path);
        assert!(f.poll().unwrap().is_empty(), "a missing file is not an error");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"t stdout F one\nt stdout F tw").unwrap();
        assert_eq!(f.poll().unwrap(), [LogLine { stream: Stream::Stdout, text: "one".into() }]);
        file.write_all(b"o\n").unwrap();
        assert_eq!(f.poll().unwrap(), [LogLine { stream: Stream::Stdout, text: "two".into() }]);
        assert!(f.poll().unwrap().is_empty());
    }
}
