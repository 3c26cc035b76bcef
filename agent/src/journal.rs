//! The command journal: which command ids this agent finished, and how.
//!
//! The panel delivers at least once: a command whose result was lost with a connection is
//! re-sent with the same id. The journal makes that safe: a known id is answered with its
//! first outcome and not executed again.
//!
//! Format: `journal.jsonl` in the state directory, one JSON object per line
//! (`{"commandId","kind","outcome","finishedAt"}`), appended and `fsync`ed before the result
//! is sent. It is bounded: past [`MAX_ENTRIES`] × 2 lines it is rewritten (temporary file,
//! fsync, rename) with the newest [`MAX_ENTRIES`]; ids older than that are far past any
//! panel deadline. A torn last line (a crash mid-append) is skipped at load.
//!
//! The remaining gap is a crash after acting and before the append: then the command runs
//! again when re-sent, which is why every executor is idempotent as well.

use std::{
    collections::{HashMap, VecDeque},
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use mpanel_protocol::messages::Outcome;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const JOURNAL_FILE: &str = "journal.jsonl";
/// Entries kept after a compaction.
pub const MAX_ENTRIES: usize = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub command_id: Uuid,
    pub kind: String,
    pub outcome: Outcome,
    pub finished_at: DateTime<Utc>,
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    entries: HashMap<Uuid, Entry>,
    order: VecDeque<Uuid>,
    lines: usize,
}

impl Journal {
    pub fn open(path: &Path) -> anyhow::Result<Journal> {
        let mut entries = HashMap::new();
        let mut order = VecDeque::new();
        let mut lines = 0;
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line.with_context(|| format!("read {}", path.display()))?;
                    lines += 1;
                    match serde_json::from_str::<Entry>(&line) {
                        Ok(e) => {
                            if entries.insert(e.command_id, e.clone()).is_none() {
                                order.push_back(e.command_id);
                            }
                        }
                        Err(_) => tracing::warn!(
                            journal = %path.display(),
                            line = lines,
                            "skipped an unreadable journal line"
                        ),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        }
        let file = open_append(path)?;
        let mut journal = Journal {
            path: path.to_owned(),
            file,
            entries,
            order,
            lines,
        };
        journal.trim_memory();
        Ok(journal)
    }

    pub fn get(&self, command_id: &Uuid) -> Option<&Entry> {
        self.entries.get(command_id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends and syncs; the outcome may be sent only after this returns.
    pub fn record(&mut self, entry: Entry) -> anyhow::Result<()> {
        if self.entries.contains_key(&entry.command_id) {
            return Ok(());
        }
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("append to {}", self.path.display()))?;
        self.lines += 1;
        self.order.push_back(entry.command_id);
        self.entries.insert(entry.command_id, entry);
        self.trim_memory();
        if self.lines > MAX_ENTRIES * 2 {
            self.compact()?;
        }
        Ok(())
    }

    fn trim_memory(&mut self) {
        while self.order.len() > MAX_ENTRIES {
            if let Some(id) = self.order.pop_front() {
                self.entries.remove(&id);
            }
        }
    }

    /// Rewrites the file with the entries in memory (the newest [`MAX_ENTRIES`]).
    fn compact(&mut self) -> anyhow::Result<()> {
        let mut text = Vec::new();
        for id in &self.order {
            serde_json::to_writer(&mut text, &self.entries[id])?;
            text.push(b'\n');
        }
        crate::state::write_atomic(&self.path, &text, 0o600)?;
        self.file = open_append(&self.path)?;
        self.lines = self.order.len();
        Ok(())
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: Uuid, echo: &str) -> Entry {
        Entry {
            command_id: id,
            kind: "ping".into(),
            outcome: Outcome::ok(&serde_json::json!({ "echo": echo })).unwrap(),
            finished_at: Utc::now(),
        }
    }

    #[test]
    fn keeps_the_first_outcome_across_reopen_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let id = Uuid::new_v4();
        {
            let mut j = Journal::open(&path).unwrap();
            j.record(entry(id, "first")).unwrap();
            j.record(entry(id, "second")).unwrap();
        }
        // A torn line from a crash is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"commandId\":")
            .unwrap();
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.get(&id).unwrap().outcome, entry(id, "first").outcome);

        for _ in 0..(MAX_ENTRIES * 2 + 5) {
            j.record(entry(Uuid::new_v4(), "x")).unwrap();
        }
        assert_eq!(j.len(), MAX_ENTRIES);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= MAX_ENTRIES * 2, "{lines}");
        assert!(j.get(&id).is_none(), "the oldest entries are forgotten");
    }
}
