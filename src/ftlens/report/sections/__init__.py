"""The sections of the report, one module each; :mod:`ftlens.report.build` puts them on the page.

Each module has ``section(sources, label) -> Section | None`` (None: nothing to show);
:mod:`~ftlens.report.sections.common` holds what they share.
"""
