"""The toolsets: one module per group of tools (`crm_<toolset>_*`), each declared on the toolset kit."""
