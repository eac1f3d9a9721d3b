//! Sealing values (AES-256-GCM, bound to their row) and checking what is sealed.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{SecretsError, MAX_KEY, MAX_VALUE};

/// An AES-256-GCM key and its id.
#[derive(Clone)]
pub struct Cipher {
    key: [u8; 32],
    id: String,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher").field("id", &self.id).finish_non_exhaustive()
    }
}

const SEALED_PREFIX: &str = "v1:";

fn aad(kind: &str, owner: &str, name: &str) -> Vec<u8> {
    format!("{kind}\0{owner}\0{name}").into_bytes()
}

impl Cipher {
    /// A cipher for a 32-byte key.
    pub fn new(key: [u8; 32]) -> Self {
        let digest = Sha256::digest([b"vmfleet secrets key id\0".as_slice(), &key].concat());
        Self { key, id: hex::encode(&digest[..8]) }
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        Self::new(rand::random())
    }

    /// From the key's text form (base64 of 32 bytes, as in the key file).
    ///
    /// # Errors
    /// Text that is not base64 of 32 bytes.
    pub fn from_text(text: &str) -> Result<Self, SecretsError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| SecretsError::Key("not base64".into()))?;
        let key: [u8; 32] =
            bytes.try_into().map_err(|b: Vec<u8>| SecretsError::Key(format!("{} bytes, not 32", b.len())))?;
        Ok(Self::new(key))
    }

    /// The key's text form.
    pub fn to_text(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.key)
    }

    /// The key's id: a hash, safe to show.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `value` for the row (`kind`, `owner`, `name`).
    pub fn seal(&self, kind: &str, owner: &str, name: &str, value: &[u8]) -> String {
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.key));
        let nonce: [u8; 12] = rand::random();
        let aad = aad(kind, owner, name);
        #[expect(clippy::expect_used, reason = "AES-GCM encryption of an in-memory buffer cannot fail")]
        let ct = cipher.encrypt(&Nonce::from(nonce), Payload { msg: value, aad: &aad }).expect("seal");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("{SEALED_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Opens a value sealed for the row (`kind`, `owner`, `name`).
    ///
    /// # Errors
    /// [`SecretsError::Sealed`] when it was sealed under another key or for another row, or
    /// was changed.
    pub fn open(&self, kind: &str, owner: &str, name: &str, sealed: &str) -> Result<Vec<u8>, SecretsError> {
        let broken = || SecretsError::Sealed(format!("{kind} {name} of {owner} does not open under key {}", self.id));
        let body = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(broken)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| broken())?;
        if bytes.len() < 12 + 16 {
            return Err(broken());
        }
        let (nonce, ct) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| broken())?;
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.key));
        let aad = aad(kind, owner, name);
        cipher.decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: &aad }).map_err(|_| broken())
    }

    /// Whether a stored text is sealed (deploy keys from before sealing are not).
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(SEALED_PREFIX)
    }
}

/// Checks an environment variable name: a shell identifier.
///
/// # Errors
/// [`SecretsError::Invalid`] saying why.
pub fn check_var_name(name: &str) -> Result<(), SecretsError> {
    let mut chars = name.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !ok_first || name.len() > 256 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(SecretsError::Invalid(format!(
            "{name:?} is not an environment variable name (letters, digits and _, not starting with a digit, up to \
             256)"
        )));
    }
    Ok(())
}

/// Checks a variable's value.
///
/// # Errors
/// [`SecretsError::Invalid`]: empty, too long, or holding a NUL.
pub fn check_value(name: &str, value: &str) -> Result<(), SecretsError> {
    if value.is_empty() {
        return Err(SecretsError::Invalid(format!("{name}: the value is empty")));
    }
    if value.len() > MAX_VALUE {
        return Err(SecretsError::Invalid(format!(
            "{name}: the value is {} bytes; the limit is {MAX_VALUE}",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(SecretsError::Invalid(format!("{name}: the value holds a NUL byte")));
    }
    Ok(())
}

/// Checks a context name.
///
/// # Errors
/// [`SecretsError::Invalid`].
pub fn check_context_name(name: &str) -> Result<(), SecretsError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SecretsError::Invalid(format!("{name:?} is not a context name (letters, digits, _ - and ., up to 100)")))
    }
}

/// What the API shows of a value: `xxxx` and, for values of 8 characters or more, the last 4.
pub fn hint(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() >= 8 {
        format!("xxxx{}", chars[chars.len() - 4..].iter().collect::<String>())
    } else {
        "xxxx".into()
    }
}

/// An SSH private key's fingerprints: `SHA256:…` (as `ssh-keygen -l`) and MD5 `aa:bb:…` (as
/// `ssh-keygen -l -E md5`, and older CircleCI configs), and its algorithm.
///
/// # Errors
/// [`SecretsError::Invalid`] for text that is not an unencrypted OpenSSH or PEM private key.
pub fn ssh_fingerprints(private_key: &str) -> Result<(String, String, String), SecretsError> {
    use md5::Digest as _;
    if private_key.len() > MAX_KEY {
        return Err(SecretsError::Invalid(format!("the key is {} bytes; the limit is {MAX_KEY}", private_key.len())));
    }
    let key = russh::keys::decode_secret_key(private_key, None).map_err(|_| {
        SecretsError::Invalid("not an unencrypted SSH private key (OpenSSH or PEM format, without a passphrase)".into())
    })?;
    let public = key.public_key();
    let sha = public.fingerprint(russh::keys::HashAlg::Sha256).to_string();
    let blob = public.to_bytes().map_err(|_| SecretsError::Invalid("the key's public half does not encode".into()))?;
    let md5 = md5::Md5::digest(&blob).iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    Ok((sha, md5, public.algorithm().as_str().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::PROJECT_ENV;

    #[test]
    fn a_value_opens_only_for_its_row_and_key() {
        let c = Cipher::generate();
        let s = c.seal(PROJECT_ENV, "gh/a/b", "TOKEN", b"s3cret-value");
        assert!(!s.contains("s3cret"));
        assert_eq!(c.open(PROJECT_ENV, "gh/a/b", "TOKEN", &s).expect("opens"), b"s3cret-value");
        assert!(c.open(PROJECT_ENV, "gh/a/c", "TOKEN", &s).is_err(), "another row");
        assert!(Cipher::generate().open(PROJECT_ENV, "gh/a/b", "TOKEN", &s).is_err(), "another key");
        let again = Cipher::from_text(&c.to_text()).expect("text form");
        assert_eq!(again.id(), c.id());
        assert_ne!(c.seal(PROJECT_ENV, "gh/a/b", "TOKEN", b"x"), c.seal(PROJECT_ENV, "gh/a/b", "TOKEN", b"x"));
        let err = Cipher::from_text("c2hvcnQ=").expect_err("short key").to_string();
        assert!(err.contains("5 bytes, not 32"), "{err}");
    }

    #[test]
    fn names_and_hints() {
        assert!(check_var_name("AWS_KEY_1").is_ok());
        for bad in ["", "1X", "A-B", "A B"] {
            assert!(check_var_name(bad).is_err(), "{bad}");
        }
        assert_eq!(hint("abcdefgh1234"), "xxxx1234");
        assert_eq!(hint("short"), "xxxx");
        assert!(check_context_name("org-global").is_ok() && check_context_name("a/b").is_err());
    }

    #[test]
    fn fingerprints_match_ssh_keygen() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("k");
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen");
        assert!(ok.success());
        let key = std::fs::read_to_string(&path).expect("key");
        let (sha, md5, alg) = ssh_fingerprints(&key).expect("fingerprints");
        let listed = |hash: &str| {
            let out = std::process::Command::new("ssh-keygen").args(["-l", "-E", hash, "-f"]).arg(&path).output();
            String::from_utf8_lossy(&out.expect("ssh-keygen -l").stdout).to_string()
        };
        assert!(listed("sha256").contains(&sha), "{sha}");
        assert!(listed("md5").contains(&format!("MD5:{md5}")), "{md5}");
        assert_eq!(alg, "ssh-ed25519");
        assert!(ssh_fingerprints("not a key").is_err());
    }
}
