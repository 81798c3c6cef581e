//! Test certificates: self-signed for `localhost`, generated with rcgen and
//! written as PEM files under the target's temporary directory.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

/// A self-signed certificate for `localhost` and its key, as PEM files.
pub struct TestCert {
    pub der: CertificateDer<'static>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_cert(name: &str, not_after_year: i32) -> TestCert {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("herald test {name}"));
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    TestCert {
        der: cert.der().clone(),
        cert: cert_path,
        key: key_path,
    }
}
