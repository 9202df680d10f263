//! The async `Store` trait over the memory store's synchronous operations, for the operator's
//! runtime, the demo and the tests.

use async_trait::async_trait;

use super::MemoryStore;
use crate::machine::apply::{ApplyId, ResumeState};
use crate::machine::{ApplyState, ControlOp};
use crate::store::{
    Claimed, DriveInputs, Lease, NewApply, RequestOutcome, Store, StoreError, Submitted,
};

#[async_trait]
impl Store for MemoryStore {
    async fn submit_or_adopt(&self, new: NewApply) -> Result<Submitted, StoreError> {
        MemoryStore::submit_or_adopt(self, new)
    }
    async fn claim(&self, owner: &str) -> Result<Option<Claimed>, StoreError> {
        MemoryStore::claim(self, owner)
    }
    async fn claim_operation(&self, owner: &str) -> Result<Option<Claimed>, StoreError> {
        MemoryStore::claim_operation(self, owner)
    }
    async fn load(&self, lease: &Lease) -> Result<DriveInputs, StoreError> {
        MemoryStore::load(self, lease)
    }
    async fn write(
        &self,
        lease: &Lease,
        to: ApplyState,
        resume: ResumeState,
        why: Option<String>,
    ) -> Result<(), StoreError> {
        MemoryStore::write(self, lease, to, resume, why.as_deref())
    }
    async fn complete_request(&self, lease: &Lease, op: ControlOp) -> Result<(), StoreError> {
        MemoryStore::complete_request(self, lease, op)
    }
    async fn fail_request(
        &self,
        lease: &Lease,
        op: ControlOp,
        reason: &str,
    ) -> Result<(), StoreError> {
        MemoryStore::fail_request(self, lease, op, reason)
    }
    async fn heartbeat(&self, lease: &Lease) -> Result<(), StoreError> {
        MemoryStore::heartbeat(self, lease)
    }
    async fn park(&self, lease: &Lease) -> Result<(), StoreError> {
        MemoryStore::park(self, lease)
    }
    async fn pending_requests(&self, applies: &[ApplyId]) -> Result<Vec<ApplyId>, StoreError> {
        MemoryStore::pending_requests(self, applies)
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        MemoryStore::release(self, lease)
    }
    async fn request(&self, apply: ApplyId, op: ControlOp) -> Result<RequestOutcome, StoreError> {
        MemoryStore::request(self, apply, op)
    }
    async fn request_by(
        &self,
        apply: ApplyId,
        op: ControlOp,
        by: &str,
    ) -> Result<RequestOutcome, StoreError> {
        MemoryStore::request_by(self, apply, op, Some(by))
    }
    async fn expire_retryable(&self) -> Result<u32, StoreError> {
        MemoryStore::expire_retryable(self)
    }
    async fn may_have_work(&self) -> Result<bool, StoreError> {
        MemoryStore::may_have_work(self)
    }
    async fn fail_apply(&self, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        MemoryStore::fail_apply(self, lease, reason)
    }
    async fn record_progress(
        &self,
        lease: &Lease,
        progress: &crate::store::progress::TaskProgress,
    ) -> Result<(), StoreError> {
        MemoryStore::record_progress(self, lease, progress)
    }
    async fn webhook_events(
        &self,
        apply: ApplyId,
    ) -> Result<Vec<crate::store::webhooks::OutboxEvent>, StoreError> {
        MemoryStore::webhook_events(self, apply)
    }
}
