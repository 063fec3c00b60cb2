//! Certificates made in the test: a private CA, and server and client certificates it signs,
//! written as PEM files the proxy's config points at.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};

/// A private certificate authority.
pub struct TestCa {
    pub cert: Certificate,
    key: KeyPair,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A certificate and its key, PEM, as written to `cert_file` and `key_file`.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: u64,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// What a leaf certificate says.
pub struct Leaf<'a> {
    /// DNS names (or IP addresses) as SANs; empty: no SAN extension at all.
    pub names: Vec<&'a str>,
    pub common_name: &'a str,
    pub serial: u64,
    /// Valid from 2020 to 2021 (already expired) instead of for a year from yesterday.
    pub expired: bool,
    pub client: bool,
}

impl<'a> Leaf<'a> {
    pub fn server(names: &[&'a str], serial: u64) -> Leaf<'a> {
        Leaf {
            names: names.to_vec(),
            common_name: names.first().copied().unwrap_or("server"),
            serial,
            expired: false,
            client: false,
        }
    }

    pub fn client(names: &[&'a str], common_name: &'a str) -> Leaf<'a> {
        Leaf {
            names: names.to_vec(),
            common_name,
            serial: 7,
            expired: false,
            client: true,
        }
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        TestCa { cert, key, pem }
    }

    /// Writes the CA certificate to `dir/{file}` and returns its path.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// Issues `leaf` and writes it to `dir/{stem}.pem` and `dir/{stem}.key`.
    pub fn issue(&self, dir: &Path, stem: &str, leaf: &Leaf<'_>) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = leaf.names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, leaf.common_name);
        params.serial_number = Some(SerialNumber::from(leaf.serial));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if leaf.client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if leaf.expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        } else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            params.not_before = time_at(now - 86_400);
            params.not_after = time_at(now + 365 * 86_400);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: leaf.serial,
            cert_file: dir.join(format!("{stem}.pem")),
            key_file: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&issued.cert_file, &issued.cert_pem).unwrap();
        std::fs::write(&issued.key_file, &issued.key_pem).unwrap();
        issued
    }
}

fn time_at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

/// The CA certificate as reqwest's root.
pub fn reqwest_root(ca: &TestCa) -> reqwest::Certificate {
    reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap()
}

/// A client identity (certificate and key) for reqwest.
pub fn reqwest_identity(issued: &Issued) -> reqwest::Identity {
    let pem = format!("{}{}", issued.cert_pem, issued.key_pem);
    reqwest::Identity::from_pem(pem.as_bytes()).unwrap()
}
