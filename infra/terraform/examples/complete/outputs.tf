output "api_url" {
  description = "URL of the Hodei API (HODEI_API_URL for the command line)."
  value       = module.control_plane.api_url
}

output "region" {
  description = "Region of the deployment (the pools' cloud.region)."
  value       = var.region
}

output "load_balancer_dns_name" {
  description = "Point domain_name at this name when route53_zone_id is null."
  value       = module.control_plane.load_balancer_dns_name
}

output "pools" {
  description = "The pools: section of config.yaml, with launch template ids and Auto Scaling group names."
  value       = local.config.pools
}

output "launch_template_ids" {
  description = "Launch template id of each pool (cloud.launch_template)."
  value       = { for id, pool in module.worker_pool : id => pool.launch_template_id }
}

output "auto_scaling_group_names" {
  description = "Auto Scaling group of each aws-asg pool (cloud.auto_scaling_group)."
  value       = { for id, pool in module.worker_pool : id => pool.auto_scaling_group_name if pool.auto_scaling_group_name != null }
}

output "config_yaml" {
  description = "The config.yaml the replicas run with (no secrets), as stored in SSM."
  value       = yamlencode(local.config)
}

output "control_plane_autoscaling_group_name" {
  description = "Auto Scaling group of the API replicas (for aws autoscaling start-instance-refresh)."
  value       = module.control_plane.autoscaling_group_name
}

output "ssm_parameter_path" {
  description = "SSM path of the control plane's configuration and secrets."
  value       = module.control_plane.ssm_parameter_path
}

output "database_address" {
  description = "Host name of the database."
  value       = module.database.address
}

output "database_max_connections" {
  description = "max_connections of the database (api_max_size x database_max_connections + headroom)."
  value       = module.database.max_connections
}

output "bootstrap_admin_key" {
  description = "Admin key (HODEI_API_KEY for hodei workers/pools): terraform output -raw bootstrap_admin_key."
  value       = random_password.admin_key.result
  sensitive   = true
}
