"""Studies (`lmssl study`): objectives or model sizes compared at equal FLOP budgets, evaluated, reported."""
