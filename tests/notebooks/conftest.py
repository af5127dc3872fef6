"""Report how long each notebook took (recorded by test_notebooks.py as a user property)."""


def pytest_terminal_summary(terminalreporter):
    rows = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, 'user_properties', ()):
                if key == 'notebook_seconds' and getattr(report, 'when', None) == 'call':
                    rows.append((report.nodeid.rsplit('[', 1)[-1].rstrip(']'), value))
    if rows:
        terminalreporter.write_sep('-', 'notebook run times (papermill, faces-synthetic)')
        for name, seconds in rows:
            terminalreporter.write_line('%-20s %6.1f s' % (name, seconds))
        terminalreporter.write_line('%-20s %6.1f s' % ('total', sum(s for _, s in rows)))
