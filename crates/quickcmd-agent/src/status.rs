//! The job store keeps its own status type (it maps to SQL); these map it to the wire's.

use quickcmd_protocol::JobStatus as WireStatus;

use crate::store::JobStatus as StoredStatus;

impl From<StoredStatus> for WireStatus {
    fn from(status: StoredStatus) -> WireStatus {
        match status {
            StoredStatus::Pending => WireStatus::Pending,
            StoredStatus::Running => WireStatus::Running,
            StoredStatus::Completed => WireStatus::Completed,
            StoredStatus::Failed => WireStatus::Failed,
            StoredStatus::Rejected => WireStatus::Rejected,
        }
    }
}

impl From<WireStatus> for StoredStatus {
    fn from(status: WireStatus) -> StoredStatus {
        match status {
            WireStatus::Pending => StoredStatus::Pending,
            WireStatus::Running => StoredStatus::Running,
            WireStatus::Completed => StoredStatus::Completed,
            WireStatus::Failed => StoredStatus::Failed,
            WireStatus::Rejected => StoredStatus::Rejected,
        }
    }
}
