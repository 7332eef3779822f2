"""dasd_lib: the library behind the DASD workbook (all logic; notebooks stay thin)."""
__version__ = "0.1.0"
