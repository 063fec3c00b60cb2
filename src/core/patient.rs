//! Patient context for a launch: a national identifier with its type, or an email address.
//! PKB's own parameter names carry them (`contextNationalId` + `contextNationalIdType`, or
//! `contextUserEmail`); this module only decides what is well-formed.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatientContext {
    NationalId { id: String, id_type: String },
    Email(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("is not a valid NHS number (10 digits with a correct check digit, no spaces)")]
    BadNhsNumber,
    #[error("must be 1-32 letters or digits")]
    BadNationalId,
    #[error("must be 1-16 letters, digits or _")]
    BadIdType,
    #[error("is not an email address")]
    BadEmail,
}

/// NHS numbers: ten digits, the last a modulus-11 check digit over the first nine with weights
/// 10..2. A remainder giving check value 10 means the number is invalid; 11 means 0.
pub fn nhs_number_is_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if s.len() != 10 || digits.len() != 10 {
        return false;
    }
    let sum: u32 = digits[..9]
        .iter()
        .zip((2..=10).rev())
        .map(|(d, w)| d * w)
        .sum();
    let check = match 11 - sum % 11 {
        11 => 0,
        10 => return false,
        c => c,
    };
    check == digits[9]
}

impl PatientContext {
    /// A national id of `id_type`. NHS numbers get the check-digit test; other types (PKB knows
    /// several national schemes) only a shape check.
    pub fn national_id(id: &str, id_type: &str) -> Result<PatientContext, (bool, ContextError)> {
        if id_type.is_empty()
            || id_type.len() > 16
            || !id_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err((false, ContextError::BadIdType));
        }
        if id_type.eq_ignore_ascii_case("NHS") {
            if !nhs_number_is_valid(id) {
                return Err((true, ContextError::BadNhsNumber));
            }
        } else if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err((true, ContextError::BadNationalId));
        }
        Ok(PatientContext::NationalId {
            id: id.to_string(),
            id_type: id_type.to_string(),
        })
    }

    pub fn email(email: &str) -> Result<PatientContext, ContextError> {
        let ok = email.len() <= 254
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && match email.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && local.len() <= 64
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && domain
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
                }
                None => false,
            };
        if ok {
            Ok(PatientContext::Email(email.to_string()))
        } else {
            Err(ContextError::BadEmail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers() {
        // Valid numbers (synthetic test range 999…, and well-known examples).
        for n in [
            "9434765919",
            "9434765870",
            "4010232137",
            "9990000018",
            "9000000009",
        ] {
            assert!(nhs_number_is_valid(n), "{n} should be valid");
        }
        for n in [
            "9434765918",   // wrong check digit
            "943476591",    // 9 digits
            "94347659190",  // 11 digits
            "943 476 5919", // formatted: refused, never rewritten
            "943476591a",
            "",
            "1000000010", // check value 10: never valid... (remainder 1)
        ] {
            assert!(!nhs_number_is_valid(n), "{n} should be invalid");
        }
    }

    #[test]
    fn contexts() {
        assert!(PatientContext::national_id("9434765919", "NHS").is_ok());
        assert_eq!(
            PatientContext::national_id("9434765918", "NHS"),
            Err((true, ContextError::BadNhsNumber))
        );
        assert!(PatientContext::national_id("1234567", "CHI").is_ok());
        assert_eq!(
            PatientContext::national_id("12 34", "CHI"),
            Err((true, ContextError::BadNationalId))
        );
        assert_eq!(
            PatientContext::national_id("9434765919", "N H S"),
            Err((false, ContextError::BadIdType))
        );
        assert!(PatientContext::email("patient@example.com").is_ok());
        assert!(PatientContext::email("first.last+tag@nhs.net").is_ok());
        for bad in [
            "",
            "x",
            "@example.com",
            "a@",
            "a@b",
            "a b@example.com",
            "a@b@example.com",
            "a@exa mple.com",
            "a@.example.com",
        ] {
            assert!(PatientContext::email(bad).is_err(), "{bad}");
        }
    }
}
