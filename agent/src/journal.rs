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
//! panel deadline. A torn line (a crash mid-append) is skipped at load, and the next entry
//! starts on a line of its own.
//!
//! Memory: only the index lives in memory — each remembered id and where its line is in the
//! file, a few dozen bytes an entry. Outcomes (up to 16 KiB of error text each) stay on disk
//! and are read back when an id is re-sent, which is rare; keeping a full journal's parsed
//! outcomes in memory cost an idle agent about 2 MiB of heap. The file is the agent's own:
//! nothing else may rewrite it while the agent runs.
//!
//! The remaining gap is a crash after acting and before the append: then the command runs
//! again when re-sent, which is why every executor is idempotent as well.

use std::{
    collections::{HashMap, VecDeque, hash_map},
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, BufWriter, Seek, Write},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
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

/// Where an entry's line is in the file.
#[derive(Debug, Clone, Copy)]
struct Line {
    offset: u64,
    /// Without the newline.
    len: usize,
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// Open to read and append: entries are appended, and read back where they are.
    file: File,
    /// The remembered ids and their lines. Holds exactly the ids of `order`.
    index: HashMap<Uuid, Line>,
    /// The remembered ids, oldest first.
    order: VecDeque<Uuid>,
    /// Lines in the file, readable or not: past [`MAX_ENTRIES`] × 2 it is compacted.
    lines: usize,
    /// The file does not end with a newline (a torn line, a failed append): the next entry
    /// starts with one.
    torn: bool,
}

impl Journal {
    pub fn open(path: &Path) -> anyhow::Result<Journal> {
        let mut index = HashMap::new();
        let mut order = VecDeque::new();
        let mut lines = 0;
        let mut torn = false;
        match File::open(path) {
            Ok(f) => {
                let mut reader = BufReader::new(f);
                let mut buf = Vec::new();
                let mut offset = 0u64;
                loop {
                    buf.clear();
                    let n = reader
                        .read_until(b'\n', &mut buf)
                        .with_context(|| format!("read {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    lines += 1;
                    torn = buf.last() != Some(&b'\n');
                    let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
                    // Parsed whole, so that a torn line is told apart; only the id is kept.
                    match serde_json::from_slice::<Entry>(text) {
                        Ok(e) => {
                            // The first outcome of an id is the one that was answered.
                            if let hash_map::Entry::Vacant(v) = index.entry(e.command_id) {
                                v.insert(Line {
                                    offset,
                                    len: text.len(),
                                });
                                order.push_back(e.command_id);
                            }
                        }
                        Err(_) => tracing::warn!(
                            journal = %path.display(),
                            line = lines,
                            "skipped an unreadable journal line"
                        ),
                    }
                    offset += n as u64;
                    // Bounded while loading too: a file twice as long never doubles the index.
                    trim(&mut index, &mut order);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        }
        Ok(Journal {
            path: path.to_owned(),
            file: open_file(path)?,
            index,
            order,
            lines,
            torn,
        })
    }

    /// The entry of `command_id` if it is remembered, read back from the file.
    pub fn get(&self, command_id: &Uuid) -> anyhow::Result<Option<Entry>> {
        let Some(line) = self.index.get(command_id) else {
            return Ok(None);
        };
        let entry = self.read(line)?;
        if entry.command_id != *command_id {
            bail!(
                "{} changed under the agent: the line of {command_id} holds another id",
                self.path.display()
            );
        }
        Ok(Some(entry))
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Appends and syncs; the outcome may be sent only after this returns.
    pub fn record(&mut self, entry: Entry) -> anyhow::Result<()> {
        if self.index.contains_key(&entry.command_id) {
            return Ok(());
        }
        let mut line = Vec::new();
        if self.torn {
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, &entry)?;
        let len = line.len() - usize::from(self.torn);
        line.push(b'\n');
        let appended = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .and_then(|()| self.file.stream_position());
        let end = match appended {
            Ok(end) => end,
            Err(e) => {
                // Part of the line may be in the file.
                self.torn = true;
                return Err(e).with_context(|| format!("append to {}", self.path.display()));
            }
        };
        self.torn = false;
        self.lines += 1;
        self.order.push_back(entry.command_id);
        self.index.insert(
            entry.command_id,
            Line {
                offset: end - (len as u64 + 1),
                len,
            },
        );
        trim(&mut self.index, &mut self.order);
        if self.lines > MAX_ENTRIES * 2 {
            self.compact()?;
        }
        Ok(())
    }

    fn read(&self, line: &Line) -> anyhow::Result<Entry> {
        let mut buf = vec![0; line.len];
        self.file
            .read_exact_at(&mut buf, line.offset)
            .with_context(|| format!("read {}", self.path.display()))?;
        serde_json::from_slice(&buf)
            .with_context(|| format!("{}: an unreadable entry", self.path.display()))
    }

    /// Rewrites the file with the remembered entries (the newest [`MAX_ENTRIES`]), copied
    /// line by line from the current one.
    fn compact(&mut self) -> anyhow::Result<()> {
        let mut moved = Vec::with_capacity(self.order.len());
        let mut buf = Vec::new();
        crate::state::write_atomic_with(&self.path, 0o600, |out| {
            let mut out = BufWriter::new(out);
            let mut offset = 0u64;
            for id in &self.order {
                let line = self.index[id];
                buf.resize(line.len, 0);
                self.file.read_exact_at(&mut buf, line.offset)?;
                out.write_all(&buf)?;
                out.write_all(b"\n")?;
                moved.push(Line {
                    offset,
                    len: line.len,
                });
                offset += line.len as u64 + 1;
            }
            out.into_inner().map_err(|e| e.into_error())?;
            Ok(())
        })?;
        self.file = open_file(&self.path)?;
        for (id, line) in self.order.iter().zip(moved) {
            self.index.insert(*id, line);
        }
        self.lines = self.order.len();
        self.torn = false;
        Ok(())
    }
}

/// Forgets the oldest ids beyond [`MAX_ENTRIES`].
fn trim(index: &mut HashMap<Uuid, Line>, order: &mut VecDeque<Uuid>) {
    while order.len() > MAX_ENTRIES {
        if let Some(id) = order.pop_front() {
            index.remove(&id);
        }
    }
}

fn open_file(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
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

    fn outcome(j: &Journal, id: &Uuid) -> Outcome {
        j.get(id).unwrap().expect("remembered").outcome
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
            assert_eq!(outcome(&j, &id), entry(id, "first").outcome);
        }
        // A torn line from a crash is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"commandId\":")
            .unwrap();
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(outcome(&j, &id), entry(id, "first").outcome);

        let ids: Vec<Uuid> = (0..(MAX_ENTRIES * 2 + 5)).map(|_| Uuid::new_v4()).collect();
        for (n, id) in ids.iter().enumerate() {
            j.record(entry(*id, &n.to_string())).unwrap();
        }
        assert_eq!(j.len(), MAX_ENTRIES);
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= MAX_ENTRIES * 2, "{lines}");
        assert!(
            j.get(&id).unwrap().is_none(),
            "the oldest entries are forgotten"
        );
        // After the compaction every remembered entry is read back from where it moved,
        // also after a reopen.
        let kept = &ids[ids.len() - MAX_ENTRIES..];
        for j in [j, Journal::open(&path).unwrap()] {
            assert_eq!(j.len(), MAX_ENTRIES);
            for (n, id) in kept.iter().enumerate() {
                let n = ids.len() - MAX_ENTRIES + n;
                assert_eq!(outcome(&j, id), entry(*id, &n.to_string()).outcome);
            }
            assert!(j.get(&ids[0]).unwrap().is_none());
        }
    }

    #[test]
    fn an_entry_after_a_torn_line_starts_a_line_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let (before, after) = (Uuid::new_v4(), Uuid::new_v4());
        Journal::open(&path)
            .unwrap()
            .record(entry(before, "before"))
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"commandId\":\"")
            .unwrap();
        let mut j = Journal::open(&path).unwrap();
        j.record(entry(after, "after")).unwrap();
        assert_eq!(outcome(&j, &after), entry(after, "after").outcome);

        let j = Journal::open(&path).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(outcome(&j, &before), entry(before, "before").outcome);
        assert_eq!(outcome(&j, &after), entry(after, "after").outcome);
    }

    #[test]
    fn an_id_written_twice_is_answered_with_its_first_outcome_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let id = Uuid::new_v4();
        let mut text = Vec::new();
        for echo in ["first", "second"] {
            serde_json::to_writer(&mut text, &entry(id, echo)).unwrap();
            text.push(b'\n');
        }
        std::fs::write(&path, text).unwrap();
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.len(), 1);
        assert_eq!(outcome(&j, &id), entry(id, "first").outcome);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let id = Uuid::new_v4();
        let mut text = b"\xff\xfe not json\n".to_vec();
        serde_json::to_writer(&mut text, &entry(id, "ok")).unwrap();
        text.push(b'\n');
        std::fs::write(&path, text).unwrap();
        let j = Journal::open(&path).unwrap();
        assert_eq!(outcome(&j, &id), entry(id, "ok").outcome);
    }
}
