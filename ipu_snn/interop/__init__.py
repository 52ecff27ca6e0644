"""Exchange with the rest of the SNN ecosystem: NIR graphs (``ipu_snn.interop.nir``).

Each module imports its optional package only when called, with an error naming the extra.
"""
