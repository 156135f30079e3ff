//! The cap on stored output of one stream: the first half of `max_output_bytes` is kept as
//! it comes, the last half in a ring; what falls out between them is counted and replaced
//! by one marker frame. The frames kept are bounded too (`max_frames`, half for the head,
//! half for the tail), so a job writing many tiny frames cannot grow the store or memory
//! without bound. Live subscribers still see every frame.

use std::collections::VecDeque;

use quickcmd_protocol::{LogFrame, StreamName};

use super::Frame;

pub(crate) struct CappedStream {
    name: StreamName,
    head_budget: usize,
    tail_budget: usize,
    head_frames: usize,
    tail_frames: usize,
    head: Vec<Frame>,
    head_bytes: usize,
    /// Set once a frame did not fit in the head; everything after goes to the tail.
    overflowed: bool,
    tail: VecDeque<Frame>,
    tail_bytes: usize,
    omitted_bytes: u64,
    /// Seq of the first frame that left the stored view; the marker takes it.
    first_omitted_seq: Option<u64>,
}

impl CappedStream {
    pub(crate) fn new(name: StreamName, max_bytes: usize, max_frames: usize) -> CappedStream {
        let head_budget = max_bytes / 2;
        let head_frames = (max_frames / 2).max(1);
        CappedStream {
            name,
            head_budget,
            tail_budget: max_bytes - head_budget,
            head_frames,
            tail_frames: max_frames.saturating_sub(head_frames).max(1),
            head: Vec::new(),
            head_bytes: 0,
            overflowed: false,
            tail: VecDeque::new(),
            tail_bytes: 0,
            omitted_bytes: 0,
            first_omitted_seq: None,
        }
    }

    /// Records a frame. Returns true when it belongs to the head, which is stored at once;
    /// tail frames are stored when the stream ends.
    pub(crate) fn accept(&mut self, frame: &Frame) -> bool {
        let size = frame.bytes.len();
        if !self.overflowed
            && self.head_bytes.saturating_add(size) <= self.head_budget
            && self.head.len() < self.head_frames
        {
            self.head_bytes += size;
            self.head.push(frame.clone());
            return true;
        }
        self.overflowed = true;
        self.tail_bytes += size;
        self.tail.push_back(frame.clone());
        while self.tail_bytes > self.tail_budget || self.tail.len() > self.tail_frames {
            let Some(oldest) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= oldest.bytes.len();
            self.omitted_bytes += oldest.bytes.len() as u64;
            self.first_omitted_seq.get_or_insert(oldest.log.seq);
        }
        false
    }

    pub(crate) fn truncated(&self) -> bool {
        self.omitted_bytes > 0
    }

    fn marker(&self) -> Option<Frame> {
        let seq = self.first_omitted_seq?;
        let timestamp = self
            .head
            .last()
            .map(|f| f.log.timestamp.clone())
            .unwrap_or_default();
        let text = format!(
            "\n[quickcmd: {} bytes of {} omitted here; stored output keeps the head and the tail]\n",
            self.omitted_bytes,
            self.name.as_str()
        );
        Some(Frame {
            log: LogFrame {
                job_id: self
                    .head
                    .first()
                    .or(self.tail.front())
                    .map(|f| f.log.job_id.clone())
                    .unwrap_or_default(),
                timestamp,
                stream: self.name,
                data: String::new(),
                is_final: false,
                seq,
                status: None,
                exit_code: None,
                audit: None,
            },
            bytes: text.into_bytes(),
        })
    }

    /// The stored view now: head, marker (if anything was dropped), tail.
    pub(crate) fn stored_frames(&self) -> Vec<Frame> {
        let mut frames = self.head.clone();
        frames.extend(self.marker());
        frames.extend(self.tail.iter().cloned());
        frames
    }

    /// Frames to store when the stream ends: the marker and the tail (the head is stored).
    pub(crate) fn marker_and_tail(&self) -> Vec<Frame> {
        let mut frames: Vec<Frame> = self.marker().into_iter().collect();
        frames.extend(self.tail.iter().cloned());
        frames
    }

    /// The stored bytes, as the result's `stdout`/`stderr` carries them.
    pub(crate) fn stored_bytes(&self) -> Vec<u8> {
        self.stored_frames()
            .iter()
            .flat_map(|f| f.bytes.iter().copied())
            .collect()
    }
}
