//! TEMPORARY stand-in until the real module lands.
use std::path::{Path, PathBuf};
#[derive(Default)]
pub struct UnpackLimits;
pub struct Layer { pub sha256: String, pub dir: PathBuf }
#[derive(Debug, thiserror::Error)]
#[error("slug")]
pub struct SlugError;
pub struct SlugCache;
impl SlugCache {
    pub fn new(_r: PathBuf, _l: UnpackLimits, _o: Option<(u32,u32)>) -> Self { SlugCache }
    pub fn layer(&self, _s: &Path, _e: Option<&str>) -> Result<Layer, SlugError> { Err(SlugError) }
    pub fn sweep_tmp(_d: &Path) -> std::io::Result<()> { Ok(()) }
}
