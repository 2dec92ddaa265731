//! The native device's files on disk, one per file under the data directory's `files/`, named by
//! its id: stored (copied and hashed) to be sent, written and synced chunk by chunk as they are
//! received, read for peers, copied out where the member wants them. The driver's file IO runs on
//! a thread of its own ([`FileWorker`]), so the device never waits for the disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use tessera_engine::StoredFile;
use tessera_engine::files::{ContentHash, FileCommand, check_name};
use tessera_engine::payload::Malformed;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Bytes copied at a time when a file is stored or copied out.
const COPY_BYTES: usize = 1024 * 1024;

/// Open files the worker keeps at once.
const OPEN_FILES: usize = 16;

/// The folder that holds the device's files.
#[derive(Debug, Clone)]
pub struct FileDir {
    dir: PathBuf,
}

/// Why a file could not be stored or copied out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The name is not one a file can be sent under.
    #[error("{0:?} cannot be sent as a file name: it needs a plain name (no control characters)")]
    Name(String),
    /// There is no such file here, or it is not whole yet.
    #[error("this device does not hold that file whole")]
    NotHeld,
    /// The destination exists.
    #[error("{0} exists already: choose another --out")]
    Exists(PathBuf),
}

impl FileDir {
    /// The files folder of the data directory `data_dir`.
    #[must_use]
    pub fn in_data_dir(data_dir: &Path) -> FileDir {
        FileDir {
            dir: data_dir.join("files"),
        }
    }

    /// Where file `id` is kept.
    #[must_use]
    pub fn path(&self, id: Uuid) -> PathBuf {
        self.dir.join(id.simple().to_string())
    }

    fn create_dir(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)
    }

    /// Copies `source` into the folder under a new id, hashing it on the way, and syncs it: what
    /// the engine needs to offer it ([`tessera_engine::Engine::send_file`]). `progress` is told
    /// the bytes copied so far, after each mebibyte.
    ///
    /// # Errors
    /// When `source` cannot be read, has no file name, or the copy cannot be written.
    pub fn store(
        &self,
        source: &Path,
        mut progress: impl FnMut(u64),
    ) -> Result<StoredFile, FileError> {
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| FileError::Name(source.display().to_string()))?;
        check_name(&name).map_err(|_| FileError::Name(name.clone()))?;
        let mut input = File::open(source)?;
        if !input.metadata()?.is_file() {
            return Err(io::Error::other(format!("{} is not a file", source.display())).into());
        }
        self.create_dir()?;
        let id = Uuid::new_v4();
        let path = self.path(id);
        let result = copy_hashing(&mut input, &path, &mut progress);
        let (size, sha256) = match result {
            Ok(done) => done,
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                return Err(error.into());
            }
        };
        sync_dir(&self.dir)?;
        Ok(StoredFile {
            id,
            mime: media_type(&name),
            name,
            size,
            sha256,
        })
    }

    /// Copies file `id` (held whole) to `out`, which must not exist; returns its size.
    ///
    /// # Errors
    /// When there is no such file, `out` exists, or the copy fails.
    pub fn copy_out(&self, id: Uuid, out: &Path) -> Result<u64, FileError> {
        let mut input = File::open(self.path(id)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => FileError::NotHeld,
            _ => FileError::Io(e),
        })?;
        let mut output = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => FileError::Exists(out.to_owned()),
                _ => FileError::Io(e),
            })?;
        let copied = io::copy(&mut input, &mut output);
        match copied.and_then(|n| output.sync_all().map(|()| n)) {
            Ok(n) => Ok(n),
            Err(error) => {
                drop(output);
                let _ = std::fs::remove_file(out);
                Err(error.into())
            }
        }
    }
}

/// Copies `input` to a new file at `path`, synced; its size and SHA-256.
fn copy_hashing(
    input: &mut File,
    path: &Path,
    progress: &mut impl FnMut(u64),
) -> io::Result<(u64, Vec<u8>)> {
    let mut output = OpenOptions::new().write(true).create_new(true).open(path)?;
    let mut hash = ContentHash::default();
    let mut buffer = vec![0u8; COPY_BYTES];
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hash.update(&buffer[..n]);
        output.write_all(&buffer[..n])?;
        size += n as u64;
        progress(size);
    }
    output.sync_all()?;
    Ok((size, hash.finish()))
}

/// Makes the folder's entries (a file created or removed) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A media type from a file name's extension (empty when unknown).
#[must_use]
pub fn media_type(name: &str) -> String {
    mime_guess::from_path(name)
        .first()
        .map(|m| m.essence_str().to_owned())
        .unwrap_or_default()
}

/// What the worker did, for the driver to hand the engine.
#[derive(Debug)]
pub enum FileDone {
    /// A chunk read for a peer ([`tessera_engine::Engine::handle_file_read`]).
    Read {
        /// The peer.
        peer: Uuid,
        /// The file.
        file: Uuid,
        /// The chunk.
        index: u64,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// A chunk received from a peer, opened (`None`: it did not open)
    /// ([`tessera_engine::Engine::handle_file_opened`]).
    Opened {
        /// The peer.
        peer: Uuid,
        /// The file.
        file: Uuid,
        /// The chunk.
        index: u64,
        /// Its content.
        plain: Option<Vec<u8>>,
    },
    /// A file's writes are durable up to `chunks` ([`tessera_engine::Engine::handle_file_synced`]).
    Synced {
        /// The file.
        file: Uuid,
        /// Chunks written.
        chunks: u64,
    },
    /// Reading or writing a file failed ([`tessera_engine::Engine::handle_file_failed`]).
    Failed {
        /// The file.
        file: Uuid,
        /// Why.
        reason: String,
    },
}

/// The thread that does the engine's file IO in order, and the channel its results come back on.
#[derive(Debug)]
pub struct FileWorker {
    commands: std_mpsc::Sender<FileCommand>,
}

impl FileWorker {
    /// Starts the worker on `files`; what it does comes back on the returned channel.
    #[must_use]
    pub fn start(files: FileDir) -> (FileWorker, mpsc::UnboundedReceiver<FileDone>) {
        let (commands, queue) = std_mpsc::channel();
        let (done, results) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut open = OpenFiles::new(files);
            while let Ok(command) = queue.recv() {
                for result in open.run(command) {
                    if done.send(result).is_err() {
                        return;
                    }
                }
            }
        });
        (FileWorker { commands }, results)
    }

    /// Queues a command (in order with those before it).
    pub fn submit(&self, command: FileCommand) {
        // The worker stops only with the device.
        let _ = self.commands.send(command);
    }
}

/// The files the worker has open, for reading or writing, a few at a time.
struct OpenFiles {
    files: FileDir,
    open: HashMap<Uuid, File>,
}

impl OpenFiles {
    fn new(files: FileDir) -> OpenFiles {
        OpenFiles {
            files,
            open: HashMap::new(),
        }
    }

    fn file(&mut self, id: Uuid, create: bool) -> io::Result<&File> {
        if !self.open.contains_key(&id) {
            if self.open.len() >= OPEN_FILES {
                self.open.clear();
            }
            if create {
                self.files.create_dir()?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .open(self.files.path(id))?;
            self.open.insert(id, file);
        }
        self.open
            .get(&id)
            .ok_or_else(|| io::Error::other("the file closed"))
    }

    fn run(&mut self, command: FileCommand) -> Vec<FileDone> {
        let failed = |file: Uuid, error: io::Error| {
            vec![FileDone::Failed {
                file,
                reason: error.to_string(),
            }]
        };
        match command {
            FileCommand::Read(asked) => {
                let mut read = Vec::new();
                for (index, offset, len) in asked.chunks() {
                    let mut bytes = vec![0u8; len];
                    // A read never creates the file.
                    let done = self
                        .file(asked.file, false)
                        .and_then(|f| f.read_exact_at(&mut bytes, offset));
                    if let Err(error) = done {
                        return failed(asked.file, error);
                    }
                    if let Some(seal) = &asked.seal {
                        match seal.seal(index, &bytes) {
                            Ok(sealed) => bytes = sealed,
                            Err(Malformed(what)) => {
                                return failed(asked.file, io::Error::other(what));
                            }
                        }
                    }
                    read.push(FileDone::Read {
                        peer: asked.peer,
                        file: asked.file,
                        index,
                        bytes,
                    });
                }
                read
            }
            FileCommand::Open(chunk) => vec![FileDone::Opened {
                peer: chunk.peer,
                file: chunk.seal.file,
                index: chunk.index,
                plain: chunk.seal.open(chunk.index, &chunk.sealed).ok(),
            }],
            FileCommand::Write {
                file,
                offset,
                bytes,
            } => match self
                .file(file, true)
                .and_then(|f| f.write_all_at(&bytes, offset))
            {
                Ok(()) => Vec::new(),
                Err(error) => failed(file, error),
            },
            FileCommand::Sync { file, chunks, size } => {
                let synced = self.file(file, true).and_then(|f| {
                    if let Some(size) = size {
                        f.set_len(size)?;
                    }
                    f.sync_data()
                });
                let synced = synced.and_then(|()| sync_dir(&self.files.dir));
                match synced {
                    Ok(()) => vec![FileDone::Synced { file, chunks }],
                    Err(error) => failed(file, error),
                }
            }
            FileCommand::Discard { file } => {
                self.open.remove(&file);
                match std::fs::remove_file(self.files.path(file)) {
                    Ok(()) => {
                        let _ = sync_dir(&self.files.dir);
                        Vec::new()
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
                    Err(error) => failed(file, error),
                }
            }
        }
    }
}
