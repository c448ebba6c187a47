//! What every target checks about an error: vitrs reports bad input as one line that names
//! the problem, so nothing from the file may smuggle in a newline or other control
//! character (which would also let a hostile file rewrite the terminal).

pub fn assert_one_line(e: &vitrs::error::Error) {
    let msg = e.to_string();
    assert!(!msg.is_empty());
    assert!(
        !msg.chars().any(char::is_control),
        "error message is not one clean line: {msg:?}"
    );
}
