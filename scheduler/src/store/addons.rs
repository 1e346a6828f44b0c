//! The store's operations on add-ons, their attachments and backups (see
//! [`crate::addons`]). A trait of its own, which [`super::Store`] requires, so that the
//! add-ons' operations stay together.

use uuid::Uuid;

use super::StoreError;
use crate::addons::model::{Addon, AddonState, Attachment, Backup};

#[async_trait::async_trait]
pub trait AddonStore: Send + Sync {
    /// Stores a new add-on with its first attachment, to its owning app, as `attachment`.
    async fn create_addon(
        &self,
        addon: &Addon,
        attachment: &str,
    ) -> Result<(Addon, Attachment), StoreError>;
    /// The add-on with this id or name.
    async fn addon(&self, id_or_name: &str) -> Result<Addon, StoreError>;
    /// The add-ons attached to `app` (owned or shared with it), or every add-on; by name.
    async fn addons(&self, app: Option<&str>) -> Result<Vec<Addon>, StoreError>;
    /// Records what the add-on's host reported: its state, why, and its port (kept once
    /// set: a service keeps its port for life). `None` when there is no such add-on.
    async fn set_addon_state(
        &self,
        id: Uuid,
        state: AddonState,
        reason: &str,
        port: Option<u16>,
    ) -> Result<Option<Addon>, StoreError>;
    /// Detaches the add-on from every app and marks it destroying; returns it and the
    /// attachments it had.
    async fn destroy_addon(&self, id: Uuid) -> Result<(Addon, Vec<Attachment>), StoreError>;
    /// Forgets a destroyed add-on, with its backups' rows.
    async fn delete_addon(&self, id: Uuid) -> Result<(), StoreError>;

    /// Attaches an add-on to `app` as `name` (a name the app has is refused).
    async fn attach_addon(
        &self,
        addon: Uuid,
        app: &str,
        name: &str,
    ) -> Result<Attachment, StoreError>;
    /// Removes an attachment; an add-on's last one is refused (destroy the add-on).
    async fn detach_addon(&self, id: Uuid) -> Result<Attachment, StoreError>;
    /// One app's attachments, or every attachment; by app and name.
    async fn attachments(&self, app: Option<&str>) -> Result<Vec<Attachment>, StoreError>;

    /// Stores a backup of `addon`, numbered after its last; returns it as stored.
    async fn add_backup(&self, backup: &Backup) -> Result<Backup, StoreError>;
    /// The add-on's backups, oldest first.
    async fn backups(&self, addon: Uuid) -> Result<Vec<Backup>, StoreError>;
}
