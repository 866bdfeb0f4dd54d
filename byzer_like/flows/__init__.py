"""Flows and pipeline files, compiled to the SQL dialect's statements and run by the SQL session.

`pipeline_file`: llm-module-style pipeline files (INI or YAML) -> one SQL script (`byzer-like pipeline run FILE`,
`ByzerLLM.pipeline(path)`).
"""
