//! Plain text tables for terminals (comfy-table): no borders, columns padded to their widest cell
//! and two spaces apart, numbers right-aligned, no trailing blanks, so output stays greppable.

use comfy_table::{presets::NOTHING, CellAlignment, ContentArrangement, Table};

/// A table with these column headers.
pub fn new(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    table
}

/// The table as text (one line per row, no trailing newline); columns in `right` are
/// right-aligned.
pub fn render(mut table: Table, right: &[usize]) -> String {
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
        .to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_without_borders() {
        let mut t = super::new(&["HOST", "RESULT", "EXIT"]);
        t.add_row(vec!["host1", "ok", "0"]);
        t.add_row(vec!["a-longer-name", "failed", "127"]);
        assert_eq!(
            super::render(t, &[2]),
            "HOST           RESULT  EXIT\n\
             host1          ok         0\n\
             a-longer-name  failed   127"
        );
    }
}
