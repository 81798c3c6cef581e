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

/// A test CA whose certificates are written as PEM files: for TLS to Redis
/// (server certificates with IP and name SANs, client certificates).
pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    /// The CA certificate (PEM file).
    pub pem: PathBuf,
    dir: PathBuf,
}

/// A certificate signed by a [`TestCa`] and its key, as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "ca-{name}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("herald test CA {name}"));
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2090, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join("ca.crt");
        std::fs::write(&pem, cert.pem()).unwrap();
        TestCa {
            key,
            cert,
            pem,
            dir,
        }
    }

    /// A certificate for `names` (host names or IP addresses) valid from 2020
    /// to `not_after_year`, for a server or (`client`) a client.
    pub fn issue(&self, file: &str, names: &[&str], not_after_year: i32, client: bool) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        // A server's certificate serves as a client's too: Redis Cluster nodes
        // present theirs when they connect to each other's TLS bus.
        params.extended_key_usages = if client {
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("herald test {file}"));
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}
