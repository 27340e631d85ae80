//! Importing local OCI image archives into containerd's CRI namespace. There is no registry
//! on the machines this runs on, so images come from tarballs (see scripts/images/build.sh).
use std::path::Path;
use std::process::Command;

use crate::error::PodError;

/// `ctr -n k8s.io -a SOCKET images import FILE`. `ctr` is the client matching the daemon's
/// version when known (2.x wants an absolute socket path, which `socket` always is here).
pub fn import_archive(ctr: &Path, socket: &Path, file: &Path) -> Result<(), PodError> {
    if !file.is_file() {
        return Err(PodError::ImageImport { file: file.into(), message: "no such file".into() });
    }
    let output = Command::new(ctr)
        .arg("-n")
        .arg("k8s.io")
        .arg("-a")
        .arg(socket)
        .args(["images", "import"])
        .arg(file)
        .output()
        .map_err(|e| PodError::ImageImport { file: file.into(), message: format!("running {}: {e}", ctr.display()) })?;
    if !output.status.success() {
        return Err(PodError::ImageImport {
            file: file.into(),
            message: format!(
                "{} exited with {}: {}",
                ctr.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    tracing::debug!(file = %file.display(), "imported image archive");
    Ok(())
}
