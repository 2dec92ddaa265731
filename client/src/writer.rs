//! The engine's writes on a task of their own, so the engine goes on while the disk syncs: writes
//! are applied in order, those that queue up during one transaction go together in the next (one
//! sync for all), and what waits for a write (its turn's outputs, answers to commands) is released
//! only once that write is durable.

use std::collections::VecDeque;

use tessera_engine::StoreWrite;
use tokio::sync::mpsc;

use crate::store::{DeviceStore, StoreError};

/// Writes handed over and not yet taken by the writing task; past this, handing over waits.
const QUEUE: usize = 16;

/// The writing task, and what waits for its writes.
#[derive(Debug)]
pub struct Writer<T> {
    writes: mpsc::Sender<StoreWrite>,
    /// How many more writes each transaction made durable, or why it failed.
    durable_rx: mpsc::UnboundedReceiver<Result<u64, StoreError>>,
    /// Writes handed over so far.
    submitted: u64,
    /// Writes durable so far.
    durable: u64,
    /// What waits, with the number of writes that must be durable first.
    held: VecDeque<(u64, T)>,
}

impl<T> Writer<T> {
    /// Starts the writing task over `store`. It ends once the writer is dropped and what was
    /// handed over is written.
    #[must_use]
    pub fn start(store: DeviceStore) -> Writer<T> {
        let (writes, mut queued) = mpsc::channel::<StoreWrite>(QUEUE);
        let (durable_tx, durable_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(first) = queued.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = queued.try_recv() {
                    batch.push(more);
                }
                let written = store
                    .write_all(&batch)
                    .await
                    .map(|()| u64::try_from(batch.len()).unwrap_or(u64::MAX));
                let failed = written.is_err();
                if durable_tx.send(written).is_err() || failed {
                    return;
                }
            }
        });
        Writer {
            writes,
            durable_rx,
            submitted: 0,
            durable: 0,
            held: VecDeque::new(),
        }
    }

    /// Hands over a turn: its write, if it has one, and what waits for it (which also waits for
    /// every write handed over before).
    ///
    /// # Errors
    /// [`StoreError::Stopped`] when the writing task has stopped on an earlier failure.
    pub async fn submit(&mut self, write: Option<StoreWrite>, then: T) -> Result<(), StoreError> {
        if let Some(write) = write {
            self.writes
                .send(write)
                .await
                .map_err(|_| StoreError::Stopped)?;
            self.submitted += 1;
        }
        self.held.push_back((self.submitted, then));
        Ok(())
    }

    /// The next thing that waited, in the order handed over, once the writes it waits for are
    /// durable.
    pub fn released(&mut self) -> Option<T> {
        let (needs, _) = self.held.front()?;
        if *needs > self.durable {
            return None;
        }
        self.held.pop_front().map(|(_, then)| then)
    }

    /// Waits until more writes are durable; never returns while none is being written.
    ///
    /// # Errors
    /// Why a write failed (it and those after it are not written).
    pub async fn durable(&mut self) -> Result<(), StoreError> {
        if self.durable == self.submitted {
            return std::future::pending().await;
        }
        match self.durable_rx.recv().await {
            Some(Ok(count)) => {
                self.durable += count;
                Ok(())
            }
            Some(Err(error)) => Err(error),
            None => Err(StoreError::Stopped),
        }
    }

    /// Whether every write handed over is durable and nothing waits to be released.
    #[must_use]
    pub fn idle(&self) -> bool {
        self.durable == self.submitted && self.held.is_empty()
    }

    /// Waits until every write handed over is durable.
    ///
    /// # Errors
    /// Why a write failed.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        while self.durable < self.submitted {
            self.durable().await?;
        }
        Ok(())
    }
}
