//! `--install-launcher DIR`: copies the launcher binary into a volume the SSM agent's container
//! mounts, so that container (AWS's image) can run it as PID 1.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why `--install-launcher` failed.
#[derive(Debug)]
pub enum InstallError {
    /// The launcher binary is not beside this one.
    SourceMissing { path: PathBuf },
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::SourceMissing { path } => write!(
                f,
                "cannot install the launcher: {} does not exist; the image must ship \
                 eks-connector-agent in the same directory as eks-connector-init",
                path.display()
            ),
            InstallError::Io { op, path, source } => write!(
                f,
                "cannot install the launcher: cannot {op} {}: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for InstallError {}

/// The launcher's file name, beside our own executable and in the destination.
pub const LAUNCHER_NAME: &str = "eks-connector-agent";

/// Copies `eks-connector-agent` from our own directory to `dest_dir` (temp file, fsync, rename)
/// with mode 0755. Returns the installed path.
pub fn install_launcher(dest_dir: &Path) -> Result<PathBuf, InstallError> {
    let exe = std::env::current_exe().map_err(|source| InstallError::Io {
        op: "locate",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let src = exe.parent().unwrap_or(Path::new("/")).join(LAUNCHER_NAME);
    install_from(&src, dest_dir)
}

fn install_from(src: &Path, dest_dir: &Path) -> Result<PathBuf, InstallError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Io { op, path, source }
    };
    if !src.is_file() {
        return Err(InstallError::SourceMissing {
            path: src.to_path_buf(),
        });
    }
    let bytes = std::fs::read(src).map_err(io("read", src))?;
    std::fs::create_dir_all(dest_dir).map_err(io("create directory", dest_dir))?;
    let dest = dest_dir.join(LAUNCHER_NAME);
    let tmp = dest_dir.join(format!(".{LAUNCHER_NAME}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(&bytes).map_err(io("write", &tmp))?;
        // The umask may have removed bits from the creation mode.
        f.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &dest).map_err(io("rename into place", &dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = std::fs::File::open(dest_dir) {
        let _ = d.sync_all();
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn install_copies_with_mode_0755_and_refuses_a_missing_source() {
        let dir = std::env::temp_dir().join(format!(
            "install-test-{}-{}",
            std::process::id(),
            crate::random::uuid_v4().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src-agent");
        std::fs::write(&src, b"#!/bin/sh\nexit 0\n").unwrap();
        let dest = install_from(&src, &dir.join("shared")).unwrap();
        assert_eq!(dest, dir.join("shared").join(LAUNCHER_NAME));
        assert_eq!(std::fs::read(&dest).unwrap(), b"#!/bin/sh\nexit 0\n");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        // Installing again replaces it atomically.
        std::fs::write(&src, b"v2").unwrap();
        install_from(&src, &dir.join("shared")).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"v2");
        let e = install_from(&dir.join("nope"), &dir.join("shared")).unwrap_err();
        assert!(matches!(e, InstallError::SourceMissing { .. }));
        assert!(e.to_string().contains("nope"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
